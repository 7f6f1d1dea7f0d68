"""Build the haven-agent container image offline, for tests/e2e/test_image.py.

No registry is reachable on the test machines, so `FROM python:3.11-slim`
cannot be pulled.  Instead:

1. A Debian base is made locally with `debootstrap --variant=minbase
   --include=python3,python3-venv,python3-pip bookworm` (about a minute) and
   cached under `CACHE_DIR` (default /var/cache/haven-agent-test; set
   HAVEN_AGENT_TEST_CACHE to move it, delete the directory to refresh it).
   It is imported into the test dockerd with `docker import`.
2. A wheelhouse with every dependency of the agent (and the build backend
   `pyproject.toml` asks for) is built on the host with pip, which can reach
   the package index, and cached per dependency set and Python version.  The
   agent's own wheel is not in it: the image builds the agent from the
   source, as it does for users.
3. The checkout is copied to a temporary build context with the wheelhouse
   inside it, and `docker build --network none --build-arg BASE=...
   --build-arg WHEELHOUSE=wheelhouse` runs with the legacy builder.  With no
   network, pip inside the build cannot reach PyPI even by mistake.

Anything the machine lacks raises `ImageUnavailable` naming it.  Only the
standard library and the docker CLI (through `tests.realdockerd`) are used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

from tests.realdockerd import RealDockerd, output_tail

__all__ = [
    "BASE_IMAGE",
    "CACHE_DIR",
    "CHECKOUT_ROOT",
    "ImageBuild",
    "ImageUnavailable",
    "build_image",
]

CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("HAVEN_AGENT_TEST_CACHE", "/var/cache/haven-agent-test")
SUITE = "bookworm"
#: Debian bookworm's python3 is 3.11: the wheelhouse must be built by a 3.11.
SUITE_PYTHON = (3, 11)
MIRROR = os.environ.get("HAVEN_AGENT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = f"hvtest/debian-python3:{SUITE}"
WHEELHOUSE = "wheelhouse"

DEBOOTSTRAP_TIMEOUT = 900.0
PIP_TIMEOUT = 600.0
IMPORT_TIMEOUT = 300.0
BUILD_TIMEOUT = 900.0

_COMPLETE = ".haven-agent-test-complete"


class ImageUnavailable(Exception):
    """The image cannot be built on this machine; the message says why."""


class ImageBuild:
    """What `build_image` did, with timings in seconds."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.base = BASE_IMAGE
        self.debootstrap_seconds: float | None = None  # None: cached rootfs
        self.wheelhouse_seconds: float | None = None  # None: cached wheels
        self.import_seconds: float | None = None
        self.build_seconds: float | None = None
        self.size_bytes: int | None = None
        self.base_size_bytes: int | None = None
        self.build_output: str = ""

    def as_dict(self) -> dict:
        return {
            "tag": self.tag,
            "base": self.base,
            "debootstrap_seconds": self.debootstrap_seconds,
            "wheelhouse_seconds": self.wheelhouse_seconds,
            "import_seconds": self.import_seconds,
            "build_seconds": self.build_seconds,
            "size_bytes": self.size_bytes,
            "base_size_bytes": self.base_size_bytes,
        }


@contextlib.contextmanager
def _locked(name: str):
    """An exclusive lock on CACHE_DIR/name.lock (parallel test runs)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv, timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=timeout, check=False, **kwargs
        )
    except FileNotFoundError as e:
        raise ImageUnavailable(f"{what}: {argv[0]} not found ({e})") from None
    except subprocess.TimeoutExpired as e:
        raise ImageUnavailable(
            f"{what}: {' '.join(argv)} did not finish within {timeout:.0f} s; "
            f"output so far: {output_tail(e.stdout or b'')} "
            f"{output_tail(e.stderr or b'')}"
        ) from None
    return proc


# -- 1. the Debian base ------------------------------------------------------


def _debootstrap_path() -> str | None:
    found = shutil.which("debootstrap")
    if found:
        return found
    return (
        "/usr/sbin/debootstrap" if os.access("/usr/sbin/debootstrap", os.X_OK) else None
    )


def ensure_debootstrap() -> str:
    """The debootstrap binary, installed with apt-get if missing."""
    found = _debootstrap_path()
    if found:
        return found
    if os.geteuid() != 0:
        raise ImageUnavailable(
            "debootstrap is not installed and installing it needs root; "
            "apt-get install debootstrap"
        )
    if shutil.which("apt-get") is None:
        raise ImageUnavailable("debootstrap is not installed and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"]
    proc = _run(argv, 600, "installing debootstrap", env=env)
    if proc.returncode != 0:
        _run(["apt-get", "update", "-qq"], 600, "apt-get update", env=env)
        proc = _run(argv, 600, "installing debootstrap", env=env)
    found = _debootstrap_path()
    if proc.returncode != 0 or not found:
        raise ImageUnavailable(
            f"debootstrap could not be installed with apt-get (status "
            f"{proc.returncode}): {output_tail(proc.stderr, 1500)}"
        )
    return found


def base_rootfs(build: ImageBuild | None = None) -> str:
    """A cached `debootstrap --variant=minbase` of bookworm with python3."""
    path = os.path.join(CACHE_DIR, f"{SUITE}-python3-minbase")
    with _locked("rootfs"):
        if os.path.exists(os.path.join(path, _COMPLETE)):
            return path
        debootstrap = ensure_debootstrap()
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        started = time.monotonic()
        proc = _run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip",
                SUITE,
                tmp,
                MIRROR,
            ],
            DEBOOTSTRAP_TIMEOUT,
            "debootstrap",
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            log = os.path.join(tmp, "debootstrap", "debootstrap.log")
            detail = ""
            with contextlib.suppress(OSError), open(log, "rb") as f:
                detail = output_tail(f.read(), 2000)
            shutil.rmtree(tmp, ignore_errors=True)
            raise ImageUnavailable(
                f"debootstrap of {SUITE} from {MIRROR} failed (status "
                f"{proc.returncode}): {output_tail(proc.stderr, 1500)}\n{detail}"
            )
        # What official slim images leave out too: downloaded packages and
        # package lists (apt-get update brings them back when needed).
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            root = os.path.join(tmp, sub)
            for name in os.listdir(root):
                target = os.path.join(root, name)
                if os.path.isfile(target) and name != "lock":
                    os.unlink(target)
        with open(os.path.join(tmp, _COMPLETE), "w") as f:
            f.write(f"{SUITE} {MIRROR} {time.strftime('%Y-%m-%d')}\n")
        os.rename(tmp, path)
        if build is not None:
            build.debootstrap_seconds = time.monotonic() - started
        return path


def import_base(dockerd: RealDockerd, build: ImageBuild | None = None) -> str:
    """Import the cached rootfs as BASE_IMAGE into `dockerd` (once)."""
    exists = dockerd.docker("image", "inspect", BASE_IMAGE, check=False)
    if exists.returncode == 0:
        return BASE_IMAGE
    rootfs = base_rootfs(build)
    started = time.monotonic()
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            rootfs,
            "--numeric-owner",
            "--exclude",
            "./" + _COMPLETE,
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc = dockerd.docker(
            "import",
            "--change",
            'CMD ["python3"]',
            "-",
            BASE_IMAGE,
            stdin=tar.stdout,
            check=False,
            timeout=IMPORT_TIMEOUT,
        )
    finally:
        tar.stdout.close()
        tar_err = tar.stderr.read()
        tar.stderr.close()
        tar.wait(60)
    if tar.returncode != 0 or proc.returncode != 0:
        raise ImageUnavailable(
            f"docker import of {rootfs} as {BASE_IMAGE} failed (tar status "
            f"{tar.returncode}: {output_tail(tar_err, 500)}; docker status "
            f"{proc.returncode}: {output_tail(proc.stderr, 1500)})"
        )
    if build is not None:
        build.import_seconds = time.monotonic() - started
    return BASE_IMAGE


# -- 2. the wheelhouse -------------------------------------------------------


def _build_requirements() -> list[str]:
    with open(os.path.join(CHECKOUT_ROOT, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["build-system"]["requires"])


def wheelhouse(build: ImageBuild | None = None) -> str:
    """A cached directory of wheels: the agent's dependencies and build backend.

    Keyed by setup.cfg, pyproject.toml, the Python version and the machine,
    so a change of dependencies builds a new one.
    """
    if sys.version_info[:2] != SUITE_PYTHON:
        raise ImageUnavailable(
            f"the wheelhouse must be built by Python "
            f"{'.'.join(map(str, SUITE_PYTHON))} (Debian {SUITE}'s python3), "
            f"but the tests run on {platform.python_version()}"
        )
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        with open(os.path.join(CHECKOUT_ROOT, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    digest.update(f"{sys.version_info[:2]} {platform.machine()}".encode())
    path = os.path.join(CACHE_DIR, f"wheels-{digest.hexdigest()[:16]}")
    with _locked("wheels"):
        if os.path.exists(os.path.join(path, _COMPLETE)):
            return path
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        started = time.monotonic()
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        for what, args in (
            ("the agent's dependencies", [CHECKOUT_ROOT]),
            ("the build backend", _build_requirements()),
        ):
            proc = _run(
                [sys.executable, "-m", "pip", "wheel", "-q", "-w", tmp, *args],
                PIP_TIMEOUT,
                f"pip wheel ({what})",
                env=env,
                cwd=tmp,
                stdin=subprocess.DEVNULL,
            )
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImageUnavailable(
                    f"pip wheel of {what} failed (status {proc.returncode}; the "
                    f"package index must be reachable from the host): "
                    f"{output_tail(proc.stderr, 2000)}"
                )
        # The image builds the agent itself from the source.
        for name in os.listdir(tmp):
            if name.startswith("haven_agent-"):
                os.unlink(os.path.join(tmp, name))
        shutil.rmtree(os.path.join(tmp, "build"), ignore_errors=True)
        with open(os.path.join(tmp, _COMPLETE), "w") as f:
            f.write(time.strftime("%Y-%m-%d") + "\n")
        os.rename(tmp, path)
        if build is not None:
            build.wheelhouse_seconds = time.monotonic() - started
        return path


# -- 3. the build ------------------------------------------------------------


def _context_ignore(directory: str, names: list[str]) -> list[str]:
    return [
        n
        for n in names
        if n in (".git", ".venv", "__pycache__", "build", "dist")
        or n.startswith("_trial_temp")
        or n.endswith(".egg-info")
    ]


def make_context(parent: str) -> str:
    """A copy of the checkout with the wheelhouse inside, in `parent`."""
    context = os.path.join(parent, "context")
    shutil.copytree(CHECKOUT_ROOT, context, ignore=_context_ignore, symlinks=True)
    wheels = wheelhouse()
    shutil.copytree(
        wheels, os.path.join(context, WHEELHOUSE), ignore=lambda d, n: [_COMPLETE]
    )
    return context


def image_size(dockerd: RealDockerd, ref: str) -> int:
    out = dockerd.docker("image", "inspect", "--format", "{{.Size}}", ref).stdout
    return int(out.strip())


def build_image(dockerd: RealDockerd, tag: str) -> ImageBuild:
    """Build the checkout's Dockerfile as `tag` on `dockerd`, offline."""
    build = ImageBuild(tag)
    import_base(dockerd, build)
    build.base_size_bytes = image_size(dockerd, BASE_IMAGE)
    wheelhouse(build)
    with tempfile.TemporaryDirectory(prefix="hvimg-") as parent:
        context = make_context(parent)
        started = time.monotonic()
        proc = dockerd.docker(
            "build",
            "--network",
            "none",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "--build-arg",
            f"WHEELHOUSE={WHEELHOUSE}",
            "--tag",
            tag,
            context,
            check=False,
            timeout=BUILD_TIMEOUT,
            env=dockerd.cli_env(DOCKER_BUILDKIT="0"),
        )
        build.build_seconds = time.monotonic() - started
    build.build_output = output_tail(proc.stdout, 20000) + output_tail(
        proc.stderr, 5000
    )
    if proc.returncode != 0:
        # Not ImageUnavailable: the machine could build, the Dockerfile failed.
        raise AssertionError(
            f"docker build of {tag} failed (status {proc.returncode}):\n"
            f"{build.build_output}"
        )
    build.size_bytes = image_size(dockerd, tag)
    return build
