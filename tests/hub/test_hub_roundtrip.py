"""A real JupyterHub round trip, graded by the trusted grader.

JupyterHub on 127.0.0.1 (dummy authenticator, simple local spawner, configurable-http-proxy
from npm, jupyterhub-singleuser with nbgrader's server extensions). The instructor releases
chapter 1; two students fetch it through the hub, fill it in through the hub's contents API
and submit it through nbgrader's assignment-list API; the instructor collects, grades with
`python -m grading autograde`, generates and releases feedback, and each student fetches
their feedback through the hub.

A separate test target (it starts a hub and two servers): `bash tests/hub/run.sh`, which
installs what it needs (tests/hub/setup.sh) and sets GRADING_HUB=1.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHP = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
BIN = Path(sys.executable).parent
SLUG = "ch01_next_token"
COURSE_ID = "llm-course"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("GRADING_HUB") != "1", reason="the hub round trip runs in `make test` (GRADING_HUB=1), or alone with tests/hub/run.sh"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, headers=None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=5, headers=headers or {})
            if r.status_code == 200:
                return
            last = r.status_code
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s ({last})")


HUB_CONFIG = '''
import os
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{base}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{base}/cookie_secret"
c.JupyterHub.pid_file = "{base}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"alice", "bob"}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{base}/home/{{username}}"
c.Spawner.cmd = [{student_python!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--ServerApp.jpserver_extensions={{'nbgrader.server_extensions.formgrader': False}}"]
import os as _os
if _os.geteuid() == 0:  # CI machines run as root
    c.Spawner.args.append("--allow-root")
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.environment = {{
    # all users share one OS account here: a per-user config gives nbgrader the student id
    # (and the server extensions that the course's tools enable, nbgrader's assignment list)
    "JUPYTER_CONFIG_PATH": lambda spawner: "{base}/config/" + spawner.user.name + ":{tools_config}",
    "PATH": {path!r},
}}
c.JupyterHub.services = [{{"name": "roundtrip", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "roundtrip", "services": ["roundtrip"],
                             "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "read:users"]}}]
c.JupyterHub.cleanup_servers = True
'''

NBGRADER_USER = '''
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "{course_id}"
c.CourseDirectory.student_id = "{user}"
c.Exchange.root = "{exchange}"
'''


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import requests

    assert CHP.exists(), "run tests/hub/setup.sh first"
    base = tmp_path_factory.mktemp("hub")
    exchange = base / "exchange"
    exchange.mkdir(mode=0o777)
    os.chmod(exchange, 0o777)
    for user in ("alice", "bob"):
        (base / "home" / user).mkdir(parents=True)
        cfg = base / "config" / user
        cfg.mkdir(parents=True)
        (cfg / "nbgrader_config.py").write_text(NBGRADER_USER.format(course_id=COURSE_ID, user=user,
                                                                      exchange=exchange))
    token = os.urandom(16).hex()
    port, hub_port, proxy_api_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    student_python = student_environment(base)
    (base / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        port=port, hub_port=hub_port, proxy_api_port=proxy_api_port, chp=str(CHP), base=base,
        student_python=str(student_python), tools_config=str(Path(sys.prefix) / "etc" / "jupyter"), token=token,
        path=f"{student_python.parent}{os.pathsep}{env['PATH']}"))
    log = open(base / "hub.log", "w")
    proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(base / "jupyterhub_config.py")], cwd=base, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/hub/api"
    headers = {"Authorization": f"token {token}"}
    try:
        wait_http(f"{api}/", 120)
        for user in ("alice", "bob"):
            r = requests.post(f"{api}/users/{user}", headers=headers, timeout=30)
            assert r.status_code in (201, 409), r.text
            r = requests.post(f"{api}/users/{user}/server", headers=headers, timeout=200)
            assert r.status_code in (201, 202, 400), r.text
        for user in ("alice", "bob"):
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:
                info = requests.get(f"{api}/users/{user}", headers=headers, timeout=30).json()
                if info.get("servers", {}).get("", {}).get("ready"):
                    break
                time.sleep(1)
            else:
                raise TimeoutError(f"the server of {user} did not start: {(base / 'hub.log').read_text()[-3000:]}")
        yield {"url": url, "api": api, "headers": headers, "base": base, "exchange": exchange, "env": env,
               "student_python": student_python}
    finally:
        for user in ("alice", "bob"):
            try:
                requests.delete(f"{api}/users/{user}/server", headers=headers, timeout=30)
            except Exception:
                pass
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except Exception:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except Exception:
                pass
            proc.wait(timeout=10)
        log.close()


def student_environment(base: Path) -> Path:
    """The Python of the students' kernels: the course's requirements and nothing of this
    repository (README, "the students' environment"). A venv whose site-packages points at
    the tools' packages through a .pth line: the .pth files over there (among them the
    editable install of this project) are not read, so neither `solutions` nor the
    repository's `autograder` can be imported; an assignment brings its own autograder."""
    import sysconfig

    env_dir = base / "student-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "course-requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run(cmd, cwd, env, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_two_students_fetch_and_submit_through_the_hub_and_get_trusted_feedback(hub):
    import requests

    from grading.simulate import make_course, submission

    t0 = time.monotonic()
    env, headers, url = hub["env"], hub["headers"], hub["url"]
    course = hub["base"] / "course"
    make_course(course, "ch01", course_id=COURSE_ID)
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f'c.Exchange.root = "{hub["exchange"]}"\n')
    nbgrader = str(BIN / "nbgrader")
    run([nbgrader, "release_assignment", SLUG, "--force"], course, env)

    answers = {"alice": {}, "bob": {"ch01.perplexity": "def perplexity(logits, targets):\n    return 1.0\n"
                                    "def check(*args, **kwargs):\n    print('all checks passed')\n"}}
    for user in ("alice", "bob"):
        base = f"{url}/user/{user}"
        r = requests.post(f"{base}/assignments/fetch", headers=headers, timeout=60,
                          data={"course_id": COURSE_ID, "assignment_id": SLUG})
        assert r.status_code == 200, r.text
        path = f"{SLUG}/{SLUG}.ipynb"
        r = requests.get(f"{base}/api/contents/{path}", headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        filled = submission(r.json()["content"], answers[user])
        r = requests.put(f"{base}/api/contents/{path}", headers=headers, timeout=60,
                         json={"type": "notebook", "format": "json", "content": filled})
        assert r.status_code in (200, 201), r.text
        r = requests.post(f"{base}/assignments/submit", headers=headers, timeout=60,
                          data={"course_id": COURSE_ID, "assignment_id": SLUG})
        assert r.status_code == 200 and '"success": false' not in r.text, r.text

    # What a student's kernel can import, from the fetched assignment's folder: the release's
    # autograder, the libraries, and no reference solution of this chapter.
    folder = hub["base"] / "home" / "alice" / SLUG
    probe = ("import importlib, sys\n"
             "import torch, transformers, autograder\n"
             "print('autograder from', autograder.__file__)\n"
             "for name in ('solutions.ch01_next_token', 'solutions'):\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except ImportError:\n"
             "        print('no', name)\n"
             "    else:\n"
             "        print('IMPORTED', name)\n")
    r = subprocess.run([str(hub["student_python"]), "-c", probe], cwd=folder, capture_output=True, text=True,
                       timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(folder.parent)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"autograder from {folder}" in r.stdout, r.stdout
    assert "IMPORTED solutions.ch01_next_token" not in r.stdout and "no solutions.ch01_next_token" in r.stdout

    run([nbgrader, "collect", SLUG], course, env)
    assert sorted(p.name for p in (course / "submitted").iterdir()) == ["alice", "bob"]
    run([sys.executable, "-m", "grading", "autograde", SLUG, "--course-dir", str(course), "--jobs", "2"], course, env)
    run([nbgrader, "generate_feedback", SLUG], course, env)
    run([nbgrader, "release_feedback", SLUG], course, env)

    from nbgrader.api import Gradebook
    from grading.nbgrader_step import Course
    c = Course(course)
    with Gradebook(c.db_url, c.course_id) as gb:
        scores = {u: gb.find_submission_notebook(SLUG, SLUG, u).score for u in ("alice", "bob")}
    assert scores == {"alice": 7.0, "bob": 6.0}

    for user in ("alice", "bob"):
        r = requests.post(f"{url}/user/{user}/assignments/fetch_feedback", headers=headers, timeout=60,
                          data={"course_id": COURSE_ID, "assignment_id": SLUG})
        assert r.status_code == 200, r.text
        found = list((hub["base"] / "home" / user / SLUG / "feedback").rglob("*.html"))
        assert found, f"no feedback fetched for {user}"
        text = found[0].read_text()
        assert "[trusted grader]" in text
        if user == "bob":
            assert "FAIL" in text and "perplexity" in text
    elapsed = time.monotonic() - t0
    print(f"hub round trip (release to feedback, servers already up): {elapsed:.1f} s")
    (hub["base"] / "roundtrip_seconds.txt").write_text(f"{elapsed:.1f}\n")
