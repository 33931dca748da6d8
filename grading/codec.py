"""The grader's side of the transport: the codec lives in ``autograder.codec`` (a student
release needs it to read its public checks); this module keeps the grader's imports short."""
from autograder.codec import (  # noqa: F401
    MAX_DEPTH, MAX_ITEMS, MAX_STR, DecodeError, EncodeError, Opaque, contains_opaque, decode, encode,
    load_tensor_bytes, load_tensors, opaque, pack, unpack)
