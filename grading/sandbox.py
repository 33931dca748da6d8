"""Run learner code in a separate, resource-limited process and watch it from outside.

Isolation, best available first (probed once per process, logged by ``isolation()``):

``bwrap``  bubblewrap, started as root: new PID, network, IPC and UTS namespaces (no
           network at all), a private filesystem view that holds only the system and the
           venv (read-only), the grading bundle (read-only), a fresh working directory and
           the output directory; the learner's code runs as a dedicated unprivileged uid
           (so the per-user process limit applies) with no capabilities.
``basic``  no bubblewrap (or it is refused, as in many containers): a fresh working
           directory, a minimal environment, a new network namespace when the kernel
           allows it; files readable by the grading user stay readable. Logged.

In both modes: rlimits on address space, CPU seconds, processes, file size and open
files; a wall-clock watchdog per cell and per case, driven by the progress the child
reports, with an absolute cap; the whole process group (and, with a dedicated uid, every
process of that uid) is killed at the end. Where the machine lets the grader create
control groups (cgroup v2, or v1's ``cpu`` controller), each sandbox gets one of its own,
capped at ``Limits.cpus`` CPUs: a submission that spins many threads or processes
cannot starve the submissions graded beside it. Elsewhere ``isolation()`` says so.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

EXIT_CODES = {137: "was killed (SIGKILL): the memory limit or a crash",
              139: "crashed (segmentation fault)", 134: "aborted (SIGABRT)",
              152: "used up its CPU time limit", 153: "wrote a file larger than the limit"}


@dataclasses.dataclass
class Limits:
    memory_mb: int = 3072  # RLIMIT_AS of the sandbox
    cpu_s: int = 300  # RLIMIT_CPU of one sandbox process (all cells and cases of one attempt)
    nproc: int = 48  # processes + threads of the sandbox uid
    fsize_mb: int = 16  # largest file the sandbox may write
    nofile: int = 256
    out_max_mb: int = 96  # everything in the output directory
    cell_timeout: float = 60.0  # CPU seconds per program cell
    case_timeout: float = 10.0  # CPU seconds per case (the autograder's in-process limit is 10 s)
    wall_factor: float = 2.0  # wall-clock limit = wall_factor * the CPU limit + 10 s
    startup_timeout: float = 120.0  # python, torch, the autograder, building the cases
    submission_timeout: float = 900.0  # absolute cap for one attempt
    total_timeout: float = 1800.0  # wall-clock budget of one submission, all attempts together
    total_cpu_s: float = 900.0  # CPU budget of one submission, all attempts together
    output_cap: int = 65536  # characters of printed output kept per cell / exercise
    # CPUs one sandbox may use at once (its control group's quota, where there is one). The
    # batch sets the machine's CPUs divided by its jobs: every sandbox grading at the same
    # time gets an equal share, and a hostile one cannot take the others'.
    cpus: float = float(os.cpu_count() or 1)


# --------------------------------------------------------------------------------------
# CPU control groups
# --------------------------------------------------------------------------------------
CGROUP_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


def _own_cgroup(controller: str | None) -> str:
    """This process's group in a hierarchy (``None``: the unified v2 one), from /proc."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (controller is None and controllers == "") or (controller in controllers.split(",")):
                return path
    except (OSError, ValueError):
        pass
    return "/"


def _cgroup_parent() -> tuple[str, Path] | None:
    """("v2" or "v1", the directory new sandbox groups go in), or None when no hierarchy
    with a CPU controller is writable here."""
    v2 = CGROUP_ROOT / "cgroup.controllers"
    candidates = []
    if v2.is_file() and "cpu" in v2.read_text().split():
        candidates.append(("v2", CGROUP_ROOT / _own_cgroup(None).lstrip("/")))
    for name in ("cpu", "cpu,cpuacct"):
        if (CGROUP_ROOT / name / "cpu.cfs_quota_us").exists():
            candidates.append(("v1", CGROUP_ROOT / name / _own_cgroup("cpu").lstrip("/")))
            break
    for version, base in candidates:
        parent = base / "course-grading"  # shared by every grading process; left in place (empty)
        try:
            parent.mkdir(exist_ok=True)
            if version == "v2":
                (parent / "cgroup.subtree_control").write_text("+cpu")
            return version, parent
        except OSError:
            continue
    return None


class CpuGroup:
    """One sandbox's control group: at most ``cpus`` CPUs for every process in it.

    The child joins it between fork and exec (``join`` runs in ``preexec_fn``), so nothing
    of the learner's ever runs outside it; bubblewrap, its children and their threads all
    inherit it. ``close`` reads how often the quota held the sandbox back and removes the
    group once its processes are gone."""

    _parent: tuple[str, Path] | None | bool = False  # probed once per grading process
    _count = 0

    def __init__(self, cpus: float):
        self.path = None
        self.version = None
        if CpuGroup._parent is False or (CpuGroup._parent and not CpuGroup._parent[1].exists()):
            CpuGroup._parent = _cgroup_parent()
        if not CpuGroup._parent or cpus <= 0:
            return
        self.version, parent = CpuGroup._parent
        CpuGroup._count += 1
        path = parent / f"sandbox-{os.getpid()}-{CpuGroup._count}"
        try:
            path.mkdir()
            quota = max(1000, int(cpus * _PERIOD_US))
            if self.version == "v2":
                (path / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
            else:
                (path / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            self.path = path
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass

    def join(self) -> None:
        """Move the calling process into the group (between fork and exec)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttled(self) -> int:
        """How many scheduling periods the quota stopped the sandbox in."""
        if self.path is None:
            return 0
        try:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "nr_throttled":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def close(self) -> int:
        n = self.throttled()
        if self.path is not None:
            for _ in range(50):  # the killed processes leave the group a moment later
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
            self.path = None
        return n


def cpu_isolation() -> str:
    """What keeps one sandbox's CPU use from starving the others, in words."""
    group = CpuGroup(1.0)
    try:
        if group.path is None:
            return ("not isolated: no writable control group with a CPU controller here (a container without "
                    "cgroup delegation); a submission that spins many threads competes with the others for the "
                    "CPUs, within its CPU-time limit")
        return f"a control group per sandbox (cgroup {group.version}), capped at Limits.cpus CPUs"
    finally:
        group.close()


# --------------------------------------------------------------------------------------
# Isolation probe
# --------------------------------------------------------------------------------------
_ISOLATION: dict | None = None


def _sandbox_uid() -> int:
    """A uid used by nothing else on the machine, one per grading process."""
    return 2_000_000 + (os.getpid() % 1_000_000)


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _can_unshare_net() -> bool:
    try:
        r = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
        return r.returncode == 0
    except Exception:
        return False


def isolation(refresh: bool = False) -> dict:
    """Which isolation works here: {"mode", "uid", "network", "notes"} (probed once)."""
    global _ISOLATION
    if _ISOLATION is not None and not refresh:
        return _ISOLATION
    notes: list[str] = []
    forced = os.environ.get("GRADING_ISOLATION", "")
    result = {"mode": "basic", "uid": None, "network": "on", "filesystem": "shared", "notes": notes,
              "cpu": cpu_isolation()}
    if result["cpu"].startswith("not isolated"):
        notes.append(f"CPU {result['cpu']}")
    bwrap = shutil.which("bwrap")
    if forced == "basic":
        notes.append("bubblewrap not used (GRADING_ISOLATION=basic)")
    elif bwrap is None:
        notes.append("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` gives filesystem, "
                     "PID and network isolation")
    else:
        probe_dir = Path(tempfile.mkdtemp(prefix="grading-probe-"))
        try:
            uid = _sandbox_uid() if os.geteuid() == 0 else None
            cmd = _bwrap_command(bwrap, probe_dir, probe_dir, probe_dir, uid) + [
                sys.executable, "-I", "-c", "import socket, os; print(os.getuid())"]
            os.chmod(probe_dir, 0o777)
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_child_env())
            if r.returncode == 0:
                result.update(mode="bwrap", uid=uid, network="off (empty network namespace)",
                              filesystem="private (system, venv and bundle read-only)")
                if uid is None:
                    notes.append("running as a non-root user: the sandbox shares this user's process count")
            else:
                notes.append(f"bubblewrap is installed but refused here: {r.stderr.strip()[:300]}")
        except Exception as exc:
            notes.append(f"bubblewrap probe failed: {exc}")
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
    if result["mode"] == "basic":
        if _can_unshare_net():
            result["network"] = "off (unshare --net)"
        else:
            notes.append("cannot create a network namespace here (unshare --net refused): the learner's code has "
                         "network access")
        notes.append("no filesystem isolation: the learner's code can read every file the grading user can; "
                     "keep the course directory unreadable to others or install bubblewrap")
        if os.geteuid() == 0:
            notes.append("running as root without bubblewrap: the process-count limit (RLIMIT_NPROC) is not "
                         "enforced for root")
    _ISOLATION = result
    return result


def _ancestors(path: Path) -> list[str]:
    out = []
    for parent in reversed(Path(path).parents):
        p = str(parent)
        if p != "/":
            out.append(p)
    return out


def _bwrap_command(bwrap: str, bundle: Path, out_dir: Path, work: Path, uid: int | None,
                   job: Path | None = None) -> list[str]:
    prefixes = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
                      | {sys.prefix, sys.base_prefix})
    cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if uid is not None:
        # The child starts as root with only these two capabilities, loads the grading code
        # (readable by root only), then drops to ``uid`` itself before any learner code runs.
        cmd += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "lib32", "sbin"):
        p = Path("/" + name)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), "/" + name]
        elif p.is_dir():
            cmd += ["--ro-bind", str(p), "/" + name]
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group"):
        if os.path.exists(f):
            cmd += ["--ro-bind", f, f]
    # The private /tmp first: a venv or Python that lives under /tmp (a checkout in /tmp, say)
    # is then bound on top of it instead of being hidden by it.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(64 << 20), "--tmpfs", "/tmp",
            "--perms", "1777", "--size", str(16 << 20), "--tmpfs", "/dev/shm"]
    made = {"/tmp", "/dev", "/proc"}
    for target in list(prefixes):
        for anc in _ancestors(Path(target)):
            if anc not in made and not anc.startswith("/usr"):
                cmd += ["--perms", "0755", "--dir", anc]
                made.add(anc)
    for p in prefixes:
        if not p.startswith("/usr/"):
            cmd += ["--ro-bind", p, p]
    cmd += ["--ro-bind", str(bundle), "/grader"]
    cmd += ["--bind", str(work), "/sandbox", "--bind", str(out_dir), "/out"]
    if job is not None:
        cmd += ["--ro-bind", str(job), "/job.json"]
    cmd += ["--chdir", "/sandbox", "--clearenv"]
    for k, v in _child_env("/sandbox").items():
        cmd += ["--setenv", k, v]
    cmd += ["--"]
    return cmd


def _child_env(home: str = "/tmp") -> dict:
    return {
        "PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "COURSE_QUICK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/mpl", "IPYTHONDIR": "/tmp/ipython", "PYTHONDONTWRITEBYTECODE": "1",
    }


# --------------------------------------------------------------------------------------
# The bundle: the trusted code the sandbox needs, read-only
# --------------------------------------------------------------------------------------
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
_PRIVATE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "exercises", "contract")


def build_bundle(dest: Path, chapter_number: int, solutions_dirs: list[Path]) -> Path:
    """Copy the autograder, the child runner and the earlier chapters' solutions into ``dest``."""
    import autograder

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Only the public part: the private declarations (references, mistakes, hidden-case
    # builders) and the contracts stay with the grader.
    shutil.copytree(Path(autograder.__file__).parent, dest / "autograder", ignore=_PRIVATE, dirs_exist_ok=True)
    shutil.copy2(HERE / "sandbox_child.py", dest / "sandbox_child.py")
    lib = dest / "course_lib" / "solutions"
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "__init__.py").write_text("")
    for d in solutions_dirs:
        for path in sorted(Path(d).glob("ch[0-9][0-9]_*.py")):
            if int(path.name[2:4]) < chapter_number and not (lib / path.name).exists():
                shutil.copy2(path, lib / path.name)
    # The grading code is readable by its owner only: in bwrap mode the child reads it as
    # root, then drops to the sandbox uid, so the learner's code cannot copy the autograder's
    # references out of it. The earlier chapters' solutions stay readable (a release ships them).
    for root, dirs, files in os.walk(dest):
        public = Path(root).resolve().is_relative_to((dest / "course_lib").resolve())
        os.chmod(root, 0o555 if public else 0o500)
        for f in files:
            os.chmod(os.path.join(root, f), 0o444 if public else 0o400)
    os.chmod(dest, 0o555)
    return dest


# --------------------------------------------------------------------------------------
# Running one attempt
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Attempt:
    events: list
    finished: bool  # the child reported the end
    killed: str | None  # why the watchdog killed it
    returncode: int | None
    unit: tuple | None  # the unit that was running when it stopped: ("cell", i) / ("ex", id) / ("start",)
    out_dir: Path
    seconds: float
    log_tail: str = ""
    cpu_s: float = 0.0  # CPU time of the sandbox processes
    throttled: int = 0  # scheduling periods in which the sandbox's CPU quota held it back

    def failure(self) -> str:
        """What happened to the process, in words for the learner."""
        if self.killed:
            return self.killed
        rc = self.returncode
        if rc in EXIT_CODES:
            return f"the process {EXIT_CODES[rc]}"
        if rc is not None and rc < 0:
            return f"the process was killed by signal {-rc}"
        if rc == 0:
            return "the process exited early (exit code 0: sys.exit, os._exit or similar)"
        return f"the process exited early with code {rc}"


def _user_process_count() -> int:
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                with open(f"/proc/{entry.name}/status") as g:
                                    threads = [x for x in g if x.startswith("Threads:")]
                                n += int(threads[0].split()[1]) if threads else 1
                            break
            except (OSError, ValueError, IndexError):
                pass
    return n


def _preexec(limits: Limits, drop_net: bool, shared_uid: bool = False, group: CpuGroup | None = None):
    import resource

    # Without a uid of its own the sandbox shares the grading user's process count.
    nproc = limits.nproc + (_user_process_count() if shared_uid else 0)

    def fn():
        if group is not None:
            group.join()
        os.setsid()
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize_mb << 20, limits.fsize_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if drop_net:
            if _libc().unshare(0x40000000) != 0:  # CLONE_NEWNET
                pass
    return fn


def _kill_uid(uid: int) -> None:
    for _ in range(3):
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(entry.path).st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
        if not found:
            return
        time.sleep(0.05)


def world_traversable(path: Path) -> bool:
    """Whether any user can reach ``path`` (every directory on the way has o+x)."""
    import stat

    path = Path(path).resolve()
    for d in [path, *path.parents]:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class HostileFile(Exception):
    """A file in the sandbox's output directory that the grader refuses to read."""


def read_regular(path, max_bytes: int, offset: int = 0) -> bytes:
    """Read a file the sandbox wrote, treating it as hostile bytes.

    Opened without following a symbolic link and without blocking (a FIFO would otherwise
    stall the grader forever), refused unless it is a regular file, and read up to
    ``max_bytes`` from ``offset``: a link to an endless device, a FIFO, a socket or a huge
    file cannot block or exhaust the grader. FileNotFoundError when it does not exist.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the path is a symbolic link
            raise HostileFile(f"{os.path.basename(str(path))} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostileFile(f"{os.path.basename(str(path))} is not a regular file")
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks, left = [], max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _dir_size(path: Path, limit_entries: int = 2000) -> tuple[int, int]:
    total, n = 0, 0
    stack = [str(path)]
    while stack and n < limit_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    n += 1
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total, n


def run_attempt(bundle: Path, job: dict, limits: Limits, n_cases: dict[str, int], n_cells: int,
                tmp_root: Path | None = None) -> Attempt:
    """Start the child on ``job``, watch its progress, kill it when a unit overruns."""
    iso = isolation()
    base = Path(tempfile.mkdtemp(prefix="grading-", dir=tmp_root))
    work, out_dir = base / "work", base / "out"
    work.mkdir()
    out_dir.mkdir()
    # one uid per grading process (workers of a pool are forked from one parent: not cached)
    uid = _sandbox_uid() if iso.get("uid") is not None else None
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(out_dir, uid, uid)
    else:
        os.chmod(work, 0o777)
        os.chmod(out_dir, 0o777)
    job_path = base / "job.json"
    if iso["mode"] == "bwrap":
        job = dict(job, extra_path="/grader/course_lib", drop_to_uid=uid)
        job_path.write_text(json.dumps(job))
        os.chmod(job_path, 0o444)
        cmd = _bwrap_command(shutil.which("bwrap"), bundle, out_dir, work, uid, job_path) + [
            sys.executable, "-I", "/grader/sandbox_child.py", "/job.json", "/out"]
        env = {"PATH": "/usr/bin:/bin"}
        cwd = str(work)
        drop_net = False
    else:
        if os.geteuid() == 0:
            # Never the learner's code as root: the child drops to a uid of its own once the
            # cases are built, which can write nothing of the course (gradebook, results).
            blocked = [str(d) for d in (Path(sys.base_prefix), Path(sys.prefix)) if not world_traversable(d)]
            if blocked:
                raise RuntimeError(
                    f"basic isolation: the sandbox's unprivileged user cannot reach Python in {blocked[0]} (a parent "
                    "directory is closed to other users), and the learner's code must not run as root. Install "
                    "bubblewrap, or install Python where other users can read it")
            uid = _sandbox_uid()
            os.chown(work, uid, uid)
            os.chown(out_dir, uid, uid)
            os.chmod(base, 0o711)
            os.chmod(bundle.parent, 0o711)  # the earlier chapters' solutions stay reachable
            job = dict(job, drop_to_uid=uid, own_paths=[str(work)])
        elif os.environ.get("GRADING_ALLOW_SHARED_USER") != "1":
            raise RuntimeError(
                "basic isolation without root: the learner's code would run as the grading user, who can write "
                "the gradebook and the other students' results. Install bubblewrap, grade as root, or set "
                "GRADING_ALLOW_SHARED_USER=1 to accept that risk (docs/instructors.md, Isolation)")
        job = dict(job, extra_path=str(bundle / "course_lib"))
        job_path.write_text(json.dumps(job))
        os.chmod(job_path, 0o444)
        cmd = [sys.executable, "-I", str(bundle / "sandbox_child.py"), str(job_path), str(out_dir)]
        env = _child_env(str(work))
        # Caches of its own: /tmp/ipython or /tmp/mpl may belong to another user here.
        env.update(IPYTHONDIR=str(work / ".ipython"), MPLCONFIGDIR=str(work / ".mpl"))
        cwd = str(work)
        drop_net = iso["network"].startswith("off") and os.geteuid() == 0
    log_path = base / "child.log"
    import resource
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    events: list = []
    seen: set = set()
    unit: tuple | None = ("start",)
    deadline = t0 + limits.startup_timeout
    hard_deadline = t0 + limits.submission_timeout
    killed = None
    # The progress file is created and opened here, before the child starts: the grader reads
    # through its own descriptor, so a FIFO, a link or a device that the learner's code puts
    # at that path later changes nothing on this side.
    status_path = out_dir / "status.jsonl"
    status_fd = os.open(status_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    if uid is not None:
        os.fchown(status_fd, uid, uid)
    pos = 0
    buf = b""
    last_size_check = 0.0
    group = CpuGroup(limits.cpus)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env, preexec_fn=_preexec(limits, drop_net, uid is None and os.geteuid() != 0,
                                                             group), close_fds=True)
        try:
            while True:
                rc = proc.poll()
                # read new progress lines (the child may forge them: only the first of each known key counts)
                try:
                    chunk = os.pread(status_fd, 1 << 20, pos)
                except OSError:
                    chunk = b""
                pos += len(chunk)
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        ev = json.loads(line)
                    except Exception:
                        continue
                    key = _event_key(ev, job, n_cases, n_cells)
                    if key is None or key in seen:
                        continue
                    seen.add(key)
                    events.append(ev)
                    now = time.monotonic()
                    kind = key[0]
                    # the child stops a cell or case after its CPU budget; this wall-clock margin
                    # catches code that blocks, sleeps or swallows the child's own timer
                    if kind == "cell":
                        unit, deadline = ("cell", key[1]), now + limits.wall_factor * limits.cell_timeout + 10
                    elif kind in ("ex", "case"):
                        unit, deadline = ("ex", key[1]), now + limits.wall_factor * limits.case_timeout + 10
                    elif kind == "end":  # keeps the unit: a forged "end" cannot move the blame
                        deadline = now + 30
                    elif kind == "start":  # imports, then the cases are built
                        deadline = now + limits.startup_timeout
                    else:
                        deadline = now + 30
                if buf and len(buf) > (1 << 20):
                    buf = b""
                if rc is not None:
                    break
                now = time.monotonic()
                if now > deadline or now > hard_deadline:
                    what = {"cell": "a cell of the notebook", "ex": "a check", "start": "start-up"}.get(
                        unit[0] if unit else "", "the grading process")
                    limit = (limits.wall_factor * limits.cell_timeout + 10 if unit and unit[0] == "cell" else
                             limits.wall_factor * limits.case_timeout + 10 if unit and unit[0] == "ex"
                             else limits.startup_timeout)
                    killed = (f"still running after {limit:g} s of wall-clock time ({what}): an infinite loop, a "
                              f"blocked process or far too slow an algorithm; it was stopped")
                    if now > hard_deadline:
                        killed = f"the whole run took longer than {limits.submission_timeout:g} s; it was stopped"
                    break
                if now - last_size_check > 0.5:
                    last_size_check = now
                    size, n = _dir_size(out_dir)
                    wsize, wn = _dir_size(work)
                    if size + wsize > (limits.out_max_mb << 20) or n + wn >= 2000:
                        killed = (f"wrote more than {limits.out_max_mb} MB or 2000 files to disk; it was stopped")
                        break
                time.sleep(0.02 if now - t0 < 2 else 0.05)
        finally:
            _terminate(proc, uid)
            os.close(status_fd)
            throttled = group.close()
    rc = proc.returncode
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    finished = any(ev.get("e") == "end" for ev in events) and not killed
    try:
        size = os.lstat(log_path).st_size
        tail = read_regular(log_path, 2000, offset=max(0, size - 2000)).decode("utf-8", "replace")
    except (OSError, HostileFile):
        tail = ""
    return Attempt(events=events, finished=finished, killed=killed, returncode=rc, unit=unit, out_dir=out_dir,
                   seconds=time.monotonic() - t0, log_tail=tail, cpu_s=cpu, throttled=throttled)


def _event_key(ev, job, n_cases, n_cells):
    if not isinstance(ev, dict):
        return None
    e = ev.get("e")
    if e in ("start", "end"):
        return (e,)
    if e in ("cell", "cell_end"):
        i = ev.get("i")
        return (e, i) if type(i) is int and 0 <= i < n_cells else None
    if e in ("ex", "ex_end"):
        x = ev.get("id")
        return (e, x) if x in job["exercises"] else None
    if e == "case":
        x, k = ev.get("id"), ev.get("k")
        return ("case", x, k) if x in job["exercises"] and type(k) is int and 0 <= k < n_cases.get(x, 0) else None
    return None


def _terminate(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if uid is not None:
        _kill_uid(uid)


def cleanup(attempt: Attempt) -> None:
    shutil.rmtree(attempt.out_dir.parent, ignore_errors=True)
