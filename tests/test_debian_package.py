"""The Debian package, installed for real on this machine (CI: root, Debian
12, no running systemd). `.ci/build-deb` builds it once per test session;
then, as an admin would: `dpkg -i`, look at what it installed, run the
installed command, upgrade to a next release whose conffile changed,
`dpkg -r`, `dpkg -P`, and compare the machine with how it was before.

The tests are the steps of one installation, in file order. They change the
machine (a package, a system user, files in /etc, /opt, /lib/systemd), so
they hold a machine-wide lock against other runs of this file, refuse to
touch a machine where imagelist is installed by someone else, and put the
machine back as it was even when a step fails or a run was killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import grp
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "imagelist"
VENV = Path("/opt/imagelist")
ETC = Path("/etc/imagelist")
ENV_FILE = ETC / "imagelist.env"
STATE = Path("/var/lib/imagelist")
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ("imagelist.service", "imagelist@.service")
ENABLED = Path("/etc/systemd/system/multi-user.target.wants/imagelist.service")

#: One run of this file at a time per machine, whichever checkout it runs from.
LOCK = Path("/run/lock/imagelist-package-test.lock")
#: Written while the package is installed by this file: the machine as it
#: was before. A run that finds it finishes the cleanup of a killed run.
MARKER = Path("/run/lock/imagelist-package-test.state")
WAIT = 20 * 60
#: What dpkg, apt and the maintainer scripts see: root's PATH, no prompts.
ROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C.UTF-8",
}
#: Where the package, its scripts and systemd's helpers put files: walked
#: whole, or (the big ones) only their top level.
WALKED = ("/etc", "/lib/systemd", "/usr/lib/systemd", "/var/lib/systemd", "/usr/share/doc")
LISTED = ("/opt", "/usr/bin", "/usr/sbin", "/var/lib", "/var/lib/dpkg/info")

#: The daemon's state directories (in /tmp, so that imagelist may enter them).
THROWAWAY_STATE = "imagelist-deb-state-"
#: The line the next release adds to the environment file, and an admin's edit.
NEXT_RELEASE_LINE = "# A line the next release adds.\n"
ADMIN_EDIT = "IMAGELIST_ADMISSION_MODE=warn\n"


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,  # a prompt would fail, not hang
        capture_output=True,
        text=True,
        env=ROOT_ENV,
        timeout=WAIT,
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def dpkg(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """dpkg has no lock timeout (apt has): wait, bounded, for other runs'."""
    deadline = time.monotonic() + WAIT
    while True:
        result = run("dpkg", *args, check=False)
        if "locked by another process" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    if check:
        assert result.returncode == 0, f"dpkg {args} exited {result.returncode}:\n{result.stderr}"
    return result


def deb_field(deb: Path, field: str) -> str:
    return run("dpkg-deb", "--field", deb, field).stdout.strip()


def installed_status() -> str:
    """dpkg's status abbreviation ("ii", "rc", ...); "" when not on the machine
    (unknown to dpkg, or only remembered as not installed: "un", "pn")."""
    result = run("dpkg-query", "--show", "--showformat=${db:Status-Abbrev}", PACKAGE, check=False)
    status = result.stdout.strip() if result.returncode == 0 else ""
    return "" if status[1:2] == "n" else status


def owner_mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


# -- the machine, before and after --------------------------------------------


@dataclasses.dataclass(frozen=True)
class MachineState:
    package: str
    accounts: tuple[str, ...]  # /etc/passwd, group, shadow, gshadow lines
    statoverrides: tuple[str, ...]
    paths: tuple[str, ...]  # every path named *imagelist* in WALKED and LISTED

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def loads(cls, text: str) -> MachineState:
        fields = json.loads(text)
        return cls(fields.pop("package"), **{k: tuple(v) for k, v in fields.items()})


def machine_state() -> MachineState:
    accounts = []
    for db in ("passwd", "group", "shadow", "gshadow"):
        with contextlib.suppress(FileNotFoundError):
            lines = Path("/etc", db).read_text().splitlines()
            accounts += [f"{db}: {ln}" for ln in lines if ln.startswith(f"{PACKAGE}:")]
    overrides = run("dpkg-statoverride", "--list").stdout.splitlines()
    paths = set()
    for top in WALKED:
        for parent, dirs, files in os.walk(top):
            paths |= {os.path.join(parent, n) for n in dirs + files if PACKAGE in n}
    for top in LISTED:
        with contextlib.suppress(FileNotFoundError):
            paths |= {os.path.join(top, n) for n in os.listdir(top) if PACKAGE in n}
    return MachineState(
        package=installed_status(),
        accounts=tuple(accounts),
        statoverrides=tuple(sorted(ln for ln in overrides if f"/{PACKAGE}" in ln)),
        paths=tuple(sorted(paths)),
    )


def restore(before: MachineState) -> None:
    """Undo what a failed step (or a killed run) left: purge the package, and
    if even that fails, remove by hand what is new since `before`."""
    if machine_state() == before:
        return
    if not any(a.startswith("passwd:") for a in before.accounts):
        stop_processes_of_the_test_user()
    if installed_status() and dpkg("--purge", PACKAGE, check=False).returncode != 0:
        # Maintainer scripts that fail would block the purge forever.
        for script in ("prerm", "postrm"):
            Path(f"/var/lib/dpkg/info/{PACKAGE}.{script}").unlink(missing_ok=True)
        dpkg("--purge", "--force-remove-reinstreq", PACKAGE, check=False)
    now = machine_state()
    for line in set(now.statoverrides) - set(before.statoverrides):
        run("dpkg-statoverride", "--remove", line.split()[-1], check=False)
    run("deb-systemd-helper", "purge", "imagelist.service", check=False)
    for path in sorted(set(machine_state().paths) - set(before.paths), reverse=True):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    for state in Path(tempfile.gettempdir()).glob(THROWAWAY_STATE + "*"):
        shutil.rmtree(state, ignore_errors=True)
    if not any(a.startswith("passwd:") for a in before.accounts):
        run("userdel", PACKAGE, check=False)
    if not any(a.startswith("group:") for a in before.accounts):
        run("groupdel", PACKAGE, check=False)


def stop_processes_of_the_test_user() -> None:
    """A daemon a killed run left behind: the user exists only because this
    file created it, so every process of that user is one this file started
    (a run holding the lock is the only one that may have)."""
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(PACKAGE).pw_uid
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and proc.stat().st_uid == uid:
                    os.kill(int(proc.name), signal.SIGKILL)


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    with LOCK.open("a") as lock:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run held {LOCK} for {WAIT} s")
                time.sleep(1)
        yield


@pytest.fixture(scope="module")
def machine() -> Iterator[MachineState]:
    """The machine as it was, for the last test to compare with; it is put
    back so after the module whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("installs a Debian package: run as root (CI does)")
    with machine_lock():
        if MARKER.exists():  # a run killed half-way: finish its cleanup
            restore(MachineState.loads(MARKER.read_text()))
            MARKER.unlink()
        before = machine_state()
        if before.package or before.accounts or before.paths:
            pytest.fail(
                "imagelist is (or was) installed on this machine, and this test would "
                f"purge it: {before}. Remove it first (dpkg -P imagelist)."
            )
        MARKER.write_text(before.dumps())
        try:
            yield before
        finally:
            restore(before)
            assert machine_state() == before, "the machine could not be put back"
            MARKER.unlink()


# -- the packages ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Packages:
    first: Path
    next: Path  # a next release: higher version, the environment file changed


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    out = tmp_path_factory.mktemp("deb")
    build = subprocess.run(
        [str(ROOT / ".ci" / "build-deb"), str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    (first,) = out.glob(f"{PACKAGE}_*.deb")
    return Packages(first, next_release(first, out / "next"))


def next_release(deb: Path, work: Path) -> Path:
    """The package as its next release would ship it, with a line added to the
    environment file. Repacked with dpkg-deb rather than built again, so the
    virtualenv is built once per run: the maintainer scripts, which decide
    what an upgrade does, are the same."""
    tree = work / "tree"
    work.mkdir()
    run("dpkg-deb", "--raw-extract", deb, tree)
    version = deb_field(deb, "Version") + "+next"
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    env = tree / ENV_FILE.relative_to("/")
    env.write_text(env.read_text() + NEXT_RELEASE_LINE)
    out = work / f"{PACKAGE}_{version}_{deb_field(deb, 'Architecture')}.deb"
    run("dpkg-deb", "-Zgzip", "--root-owner-group", "--build", tree, out)
    return out


@pytest.fixture(scope="module")
def installed(machine: MachineState, packages: Packages) -> Packages:
    dpkg("--install", packages.first)
    return packages


class InstalledDaemon(Daemon):
    """/usr/bin/imagelist as the service runs it: as imagelist, in a bare
    environment, its state directory given as systemd's StateDirectory=."""

    user = PACKAGE

    def __init__(self, state: Path) -> None:
        super().__init__()
        self.env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "STATE_DIRECTORY": str(state)}

    def command(self) -> list[str]:
        return ["/usr/bin/imagelist", *self.args]


# -- the steps ----------------------------------------------------------------


def test_changelog_version_is_the_setup_py_version() -> None:
    # debian/rules refuses to build when they differ; this says so sooner.
    changelog = (ROOT / "debian" / "changelog").read_text()
    top = re.match(r"imagelist \(([^)]+)\)", changelog)
    setup = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert top and top.group(1) == setup.stdout.split()[-1]


def test_install_creates_a_system_user_and_group_without_login_or_home(
    installed: Packages,
) -> None:
    user, group = pwd.getpwnam(PACKAGE), grp.getgrnam(PACKAGE)
    assert user.pw_gid == group.gr_gid and group.gr_mem == []
    assert user.pw_uid < 1000 and group.gr_gid < 1000  # Debian's system range
    assert user.pw_shell == "/usr/sbin/nologin"
    assert user.pw_dir == "/nonexistent" and not os.path.exists(user.pw_dir)
    (shadow,) = [ln for ln in machine_state().accounts if ln.startswith("shadow:")]
    assert shadow.split(":")[2].strip() in ("*", "!"), "the account has a password"


def test_install_puts_the_command_units_and_environment_file_in_place(
    installed: Packages,
) -> None:
    # The command on PATH runs the package's virtualenv on Debian's Python.
    assert shutil.which(PACKAGE, path=ROOT_ENV["PATH"]) == "/usr/bin/imagelist"
    assert Path("/usr/bin/imagelist").resolve() == VENV / "bin" / "imagelist"
    assert (VENV / "bin" / "python").resolve() == Path("/usr/bin/python3.11").resolve()
    for unit in UNITS:
        assert (UNIT_DIR / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()
        assert owner_mode(UNIT_DIR / unit) == ("root", "root", 0o644)

    # The environment file: a conffile, readable by the service's group only.
    conffiles = run("dpkg-query", "--show", "--showformat=${Conffiles}", PACKAGE).stdout.split()
    assert str(ENV_FILE) in conffiles
    assert ENV_FILE.read_bytes() == (ROOT / "systemd" / "imagelist.env.example").read_bytes()
    assert owner_mode(ETC) == ("root", PACKAGE, 0o750)
    assert owner_mode(ENV_FILE) == ("root", PACKAGE, 0o640)
    assert "#IMAGELIST_TOKENS_FILE=/etc/imagelist/tokens.yaml" in ENV_FILE.read_text()

    # The virtualenv is root's: the service can change none of its code.
    writable = [
        p for p in [VENV, *VENV.rglob("*")]
        if not p.is_symlink() and (p.lstat().st_uid != 0 or p.lstat().st_mode & 0o022)
    ]  # fmt: skip
    assert not writable

    # Every file as shipped; bytecode compiled on the machine, none shipped.
    assert run("dpkg", "--verify", PACKAGE).stdout == ""
    listed = run("dpkg-query", "--listfiles", PACKAGE).stdout.splitlines()
    assert not [p for p in listed if "__pycache__" in p]
    sources = list((VENV / "lib").rglob("*.py"))
    uncompiled = [s for s in sources if not os.path.exists(importlib.util.cache_from_source(s))]
    assert sources and not uncompiled


def test_installed_units_pass_systemd_analyze_verify(installed: Packages) -> None:
    # The binary the units name exists now: verify has nothing at all to say.
    result = run("systemd-analyze", "verify", *(UNIT_DIR / u for u in UNITS), check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_service_is_enabled_and_started_only_where_systemd_runs(installed: Packages) -> None:
    # Enabled even without a running systemd, so a VM's next boot starts it.
    assert ENABLED.is_symlink()
    assert ENABLED.resolve() == (UNIT_DIR / "imagelist.service").resolve()
    if os.path.isdir("/run/systemd/system"):
        assert run("systemctl", "is-active", "imagelist.service", check=False).stdout == "active\n"
    else:  # a container or chroot: nothing was started, nothing failed
        assert run("pgrep", "-u", PACKAGE, check=False).returncode == 1


def test_installed_command_serves_http_as_the_imagelist_user(installed: Packages) -> None:
    user = pwd.getpwnam(PACKAGE)
    state = Path(tempfile.mkdtemp(prefix=THROWAWAY_STATE))
    try:
        os.chown(state, user.pw_uid, user.pw_gid)
        daemon = InstalledDaemon(state)
        with daemon:
            assert daemon.proc is not None
            status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
            assert re.search(rf"^Uid:\s+{user.pw_uid}\s", status, re.MULTILINE)
            assert re.search(r"^Groups:\s*$", status, re.MULTILINE)  # not root's groups

            assert daemon.request("GET", "/health/ping")[:2] == (
                200,
                {"status": "ok", "storage": "sqlite"},
            )
            entry = {"id": "sha256:" + "ab" * 32, "name": "myorg/apache2", "tags": ["2.4"]}
            assert daemon.request("PUT", "/images", entry)[0] == 200
            status_code, got, _ = daemon.request("GET", f"/images/{entry['id']}")
            assert status_code == 200 and got["tags"] == ["2.4"]
            metrics = daemon.request("GET", "/metrics")[1].decode()
            version = deb_field(installed.first, "Version")
            assert 'imagelist_build_info{python="3.11.' in metrics
            assert f'version="{version}"' in metrics
            # Served from the virtualenv's share/, not from a checkout.
            assert daemon.request("GET", "/openapi.yaml")[0] == 200
        assert daemon.proc.returncode == 0
        assert owner_mode(state / "imagelist.db")[:2] == (PACKAGE, PACKAGE)
    finally:
        shutil.rmtree(state)


def test_maintainer_scripts_restart_after_an_upgrade_and_stop_only_on_remove(
    installed: Packages,
) -> None:
    # What deb-systemd-invoke would do under systemd (it is skipped here):
    # prerm stops the service only for a removal, so an upgrade keeps it
    # running while dpkg unpacks, and postinst restarts it once, when the new
    # files are in place ($2, the old version, is set on an upgrade).
    prerm = Path(f"/var/lib/dpkg/info/{PACKAGE}.prerm").read_text()
    postinst = Path(f"/var/lib/dpkg/info/{PACKAGE}.postinst").read_text()
    stops = re.findall(r"^if (.*) ; then\n\tdeb-systemd-invoke stop ", prerm, re.MULTILINE)
    assert stops == ['[ -z "${DPKG_ROOT:-}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ]']
    assert re.search(
        r'if \[ -n "\$2" \]; then\n\t+_dh_action=restart\n\t+else\n\t+_dh_action=start\n\t+fi\n'
        r"\t+deb-systemd-invoke \$_dh_action 'imagelist.service'",
        postinst,
    )


def test_upgrade_with_a_changed_conffile_keeps_the_admins_edit_without_a_prompt(
    installed: Packages,
) -> None:
    with ENV_FILE.open("a") as env:
        env.write(ADMIN_EDIT)
    # The README's way, apt with a local file; --force-confold answers the
    # conffile question (kept, new one beside it) that dpkg would ask.
    run(
        "apt-get", "install", "--yes", "-o", "DPkg::Lock::Timeout=600",
        "-o", "Dpkg::Options::=--force-confold", installed.next,
    )  # fmt: skip
    version = run("dpkg-query", "--show", "--showformat=${Version}", PACKAGE).stdout
    assert version == deb_field(installed.next, "Version") and installed_status() == "ii"
    assert ENV_FILE.read_text().endswith(ADMIN_EDIT)
    assert (ETC / "imagelist.env.dpkg-dist").read_text().endswith(NEXT_RELEASE_LINE)
    assert owner_mode(ENV_FILE) == ("root", PACKAGE, 0o640)
    assert owner_mode(ETC / "imagelist.env.dpkg-dist") == ("root", PACKAGE, 0o640)
    assert run("setpriv", f"--reuid={PACKAGE}", f"--regid={PACKAGE}", "--clear-groups",
               "/usr/bin/imagelist", "--help").stdout  # fmt: skip


def test_remove_stops_using_the_files_but_keeps_configuration_data_and_user(
    installed: Packages,
) -> None:
    # What systemd's StateDirectory= made when the service first ran.
    user = pwd.getpwnam(PACKAGE)
    STATE.mkdir(mode=0o750)
    os.chown(STATE, user.pw_uid, user.pw_gid)
    (STATE / "imagelist.db").write_bytes(b"data")

    dpkg("--remove", PACKAGE)
    assert installed_status() == "rc"
    gone = [VENV, Path("/usr/bin/imagelist"), *(UNIT_DIR / u for u in UNITS)]
    assert not [p for p in gone if os.path.lexists(p)]
    assert ENV_FILE.read_text().endswith(ADMIN_EDIT)
    assert (STATE / "imagelist.db").read_bytes() == b"data"
    assert pwd.getpwnam(PACKAGE).pw_uid == user.pw_uid


def test_purge_leaves_the_machine_as_it_was(installed: Packages, machine: MachineState) -> None:
    dpkg("--purge", PACKAGE)
    assert machine_state() == machine
