"""The pretrained Shakespeare model that chapter 7 ships for the later chapters."""
import json
import sys
from pathlib import Path


from solutions.ch01_next_token import shakespeare_text
from solutions.ch07_pretraining import (PRETRAINED_NAME, char_vocab, encode_corpus, estimate_loss,
                                        load_pretrained_shakespeare, train_val_split)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def test_the_shipped_model_is_the_one_the_script_describes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_shakespeare as script

    meta = json.loads((MODELS / f"{PRETRAINED_NAME}.json").read_text())
    for key, value in script.MODEL.items():
        assert meta["config"][key] == value, f"config {key}: shipped {meta['config'][key]}, script {value}"
    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in script.ARTIFACT._asdict().items()}
    for key in ("steps", "batch_size", "max_lr", "min_lr", "warmup", "weight_decay", "betas", "grad_clip", "seed"):
        assert meta["info"]["recipe"][key] == recipe[key], f"recipe {key} differs from the script's"
    assert meta["vocab"] == char_vocab(shakespeare_text()), "the vocabulary is not the complete works' characters"


def test_the_shipped_model_loads_and_predicts_held_out_shakespeare_well():
    model, encode, decode = load_pretrained_shakespeare(MODELS)
    assert not model.training
    assert model.lm_head.weight is model.wte.weight  # tied, stored once
    text = shakespeare_text()
    _, val_ids = train_val_split(encode_corpus(text, char_vocab(text)), 0.9)
    loss = estimate_loss(model, val_ids, 128, 16, 8, seed=5)
    # An untrained model scores log(84) = 4.43; the recorded value is 1.50 on 200 batches.
    assert loss < 1.62, f"held-out loss {loss:.3f}: the shipped weights are not the trained model"
    assert decode(encode("ROMEO:\nO, she doth teach")) == "ROMEO:\nO, she doth teach"


def test_a_broken_model_file_is_refused(tmp_path):
    meta = json.loads((MODELS / f"{PRETRAINED_NAME}.json").read_text())
    meta["config"]["n_layer"] = 3
    (tmp_path / f"{PRETRAINED_NAME}.json").write_text(json.dumps(meta))
    (tmp_path / f"{PRETRAINED_NAME}.safetensors").write_bytes((MODELS / f"{PRETRAINED_NAME}.safetensors").read_bytes())
    try:
        load_pretrained_shakespeare(tmp_path)
    except (ValueError, RuntimeError) as exc:
        assert "blocks.3" in str(exc) or "unexpected" in str(exc) or "missing" in str(exc)
    else:
        raise AssertionError("weights of a 4-layer model loaded into a 3-layer config")

