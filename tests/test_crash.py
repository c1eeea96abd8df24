"""Power loss and process kills at every I/O of every commit (docs/reference.md section 8).

Workloads of commits (puts, deletes, overflow values, named databases, file growth and
shrinking, ``sync=True`` and ``sync=False``, ``env.sync()``) run on the simulated disk of
:mod:`crashsim`. At each crash point — before every write, sync and truncate of the data
file, which puts one between every two I/Os of a commit and one after each commit —
the test takes several power-loss images of the file (unsynced writes kept, dropped or
torn at random), writes each to a file of its own and opens it as after a reboot (a
new boot id, so weak metas of the old boot are not trusted). Each image must:

- open, and pass ``check_env`` with no problem;
- hold exactly the contents of one commit that may survive: one acknowledged since the
  last commit made durable (a sync returned after its meta was written; for
  ``sync=True`` that is every commit as soon as it returns, and after ``env.sync()``
  every commit so far), or the one in flight — never a mix, never anything older;
- take one more commit and still pass the check, now and then.

The file as the process left it (the page cache, as after a kill -9) is opened too,
with the same boot id: it must hold the last acknowledged commit or the one in flight.

``test_power_loss_stops_commits_dead`` runs the workload again for each ``n`` with the
n-th I/O raising :class:`crashsim.PowerLoss`, so the commit stops dead there; the other
tests take their images from a callback run before each I/O, one run for all points.

``KVMM_CRASH_SCALE=k`` makes workloads ``k`` times longer and takes ``k`` times more
images per point; the figures (crash points, images, outcomes) are printed at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import zlib

import pytest
from crashsim import Disk, PowerLoss, make_workload, read_all, report_figures, run_step

import kvmm
import kvmm.env
import kvmm.reclaim
import kvmm.store
from kvmm import format as fmt
from kvmm.check import check_env

SCALE = float(os.environ.get("KVMM_CRASH_SCALE", "1"))
DAMAGES = max(1, round(3 * SCALE))  # power-loss images per crash point
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIGURES = {"crash points": 0, "power-loss images": 0, "process-crash images": 0,
           "pages kept": 0, "pages torn": 0, "pages dropped": 0, "commits after recovery": 0,
           "lost data": 0, "failed to open or check": 0}


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    report_figures(request, "crash simulation", FIGURES)


@contextlib.contextmanager
def boot(boot_id: bytes):
    """Open environments as if the machine had booted with ``boot_id``."""
    saved = kvmm.env.BOOT_ID
    kvmm.env.BOOT_ID = boot_id
    try:
        yield
    finally:
        kvmm.env.BOOT_ID = saved


@pytest.fixture
def small_steps(monkeypatch):
    """Grow, shrink and autosync in steps of a few pages, so small workloads do all three
    many times (the defaults are MiBs)."""
    monkeypatch.setattr(kvmm.store, "GROW_MIN", 16 * 4096)
    monkeypatch.setattr(kvmm.reclaim, "SHRINK_MIN", 16 * 4096)
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_MIN", 32 * 4096)
    monkeypatch.setattr(kvmm.store, "AUTOSYNC_WRITTEN", 64 * 4096)


class Lab:
    """Checks crash images of one workload run against the commits that may survive.

    ``states[i]``: the contents of the i-th acknowledged commit (0: the database before
    the workload). A commit is durable — no power loss may take it away — once an
    ``env.sync()`` returned after it (``synced``), or when it is steady (its meta says
    its pages were synced first: ``steady[i]``) and a sync completed after its meta was
    written (``Disk.synced_meta_writes`` reached ``marks[i]``). A weak commit's meta
    may well be on disk, but after a reboot kvmm rightly passes it over.
    """

    def __init__(self, tmp_path, seed: int, disk: Disk, real_path: str, options: dict,
                 initial: dict):
        self.tmp_path = tmp_path
        self.image_path = str(tmp_path / "image.kvmm")
        self.seed = seed
        self.rng = random.Random(seed)
        self.disk = disk
        self.real_path = real_path
        self.options = options
        self.states = [initial]
        self.marks = [disk.meta_writes]
        self.steady = [True]
        self.synced = 0
        self.inflight = None
        self.failures: list[str] = []
        self.point = 0

    def floor(self) -> int:
        """The newest acknowledged commit that is durable."""
        done = self.disk.synced_meta_writes
        i = len(self.states) - 1
        while i > self.synced and not (self.steady[i] and self.marks[i] <= done):
            i -= 1
        return i

    def acknowledged(self, contents: dict, step: tuple) -> None:
        """Commit (or ``env.sync()``) ``step`` returned, leaving ``contents``."""
        disk = self.disk
        self.states.append(contents)
        self.marks.append(disk.meta_writes)
        self.inflight = None
        if step[0] == "sync":
            self.steady.append(True)
            self.synced = len(self.states) - 1
        elif self.marks[-1] == self.marks[-2]:  # nothing to commit: no meta written
            self.steady.append(self.steady[-1])
        else:
            self.steady.append(fmt.decode_meta(disk.last_meta).steady)

    def crash_point(self, disk=None, kind=None) -> None:
        """Take power-loss images of the disk as it is now, and the process-crash one."""
        self.point += 1
        FIGURES["crash points"] += 1
        floor = self.floor()
        allowed = self.states[floor:] + ([self.inflight] if self.inflight is not None else [])
        seen = set()
        stats: dict = {}
        for _ in range(DAMAGES):
            image = self.disk.crash(self.rng, stats)
            digest = zlib.crc32(image), len(image)
            if digest in seen:
                continue
            seen.add(digest)
            FIGURES["power-loss images"] += 1
            self.verify(image, allowed, reboot=True, what=f"power loss (floor {floor})")
        for fate in ("kept", "torn", "dropped"):
            FIGURES[f"pages {fate}"] += stats.get(fate, 0)
        with open(self.real_path, "rb") as f:
            image = f.read()
        FIGURES["process-crash images"] += 1
        last = [self.states[-1]] + ([self.inflight] if self.inflight is not None else [])
        self.verify(image, last, reboot=False, what="process crash")

    def verify(self, image: bytes, allowed: list, reboot: bool, what: str) -> None:
        """Open ``image`` as a data file; it must pass the check and hold an allowed
        state. Failures are collected (with the image saved) rather than raised, so the
        figures count them all."""
        with open(self.image_path, "wb") as f:
            f.write(image)
        options = dict(self.options, subdir=False, lock=False, max_dbs=8)
        options.pop("sync", None)
        try:
            with boot(os.urandom(16) if reboot else kvmm.env.BOOT_ID):
                env = kvmm.open(self.image_path, **options)
            try:
                problems = check_env(env)
                if problems:
                    self.fail(image, what, f"check: {problems[:3]}", "failed to open or check")
                    return
                got = read_all(env)
                if got not in allowed:
                    self.fail(image, what, "contents of no allowed commit", "lost data")
                    return
                if self.rng.random() < 0.3:
                    with env.begin(write=True) as txn:
                        txn.put(b"after the crash", image[-64:])
                    FIGURES["commits after recovery"] += 1
                    problems = check_env(env)
                    if problems or read_all(env)[None].get(b"after the crash") != image[-64:]:
                        self.fail(image, what, f"commit after recovery: {problems[:3]}",
                                  "failed to open or check")
            finally:
                env.close()
        except Exception as e:  # noqa: BLE001 - any failure to open or read is the finding
            self.fail(image, what, f"{type(e).__name__}: {e}", "failed to open or check")

    def fail(self, image: bytes, what: str, why: str, figure: str) -> None:
        FIGURES[figure] += 1
        saved = self.tmp_path / f"failed-{len(self.failures)}.kvmm"
        if len(self.failures) < 20:
            saved.write_bytes(image)
        self.failures.append(f"seed {self.seed}, crash point {self.point}, {what}: {why} "
                             f"(image saved as {saved})")

    def assert_clean(self) -> None:
        kinds: dict[str, list] = {}  # the failures grouped by what went wrong
        for text in self.failures:
            why = re.sub(r"\d+", "N", text.split("): ", 1)[-1].split(" (image")[0])
            kinds.setdefault(why[:90], []).append(text)
        assert not self.failures, f"{len(self.failures)} bad images, {len(kinds)} kinds:\n" + (
            "\n".join(f"{len(v)} x {v[0]}" for v in kinds.values()))


def start(tmp_path, options: dict) -> tuple[str, Disk]:
    """Create the database outside the simulation; return its path and a disk whose
    durable image is the new file."""
    path = str(tmp_path / "data.kvmm")
    kvmm.open(path, subdir=False, **options).close()
    return path, Disk.of_file(path, meta_bytes=2 * options.get("page_size", 4096))


def run_workload(tmp_path, seed: int, steps: int, options: dict, **kwargs) -> Lab:
    """Run a workload with a crash point before every I/O and after the last step."""
    workload, states = make_workload(seed, steps, sync_steps=not options.get("sync", True),
                                     **kwargs)
    path, disk = start(tmp_path, options)
    lab = Lab(tmp_path, seed, disk, path, options, states[0])
    disk.before_io = lab.crash_point
    with kvmm.Environment(path, subdir=False, max_dbs=8, datafile_class=disk.datafile_class(),
                   **options) as env:
        for i, step in enumerate(workload):
            lab.inflight = states[i + 1] if step[0] == "commit" else None
            run_step(env, step)
            lab.acknowledged(states[i + 1], step)
            if step[0] == "sync":
                assert disk.synced_meta_writes == disk.meta_writes, (
                    f"step {i}: env.sync() returned before the meta was synced")
            elif options.get("sync", True) and options.get("metasync", True):
                assert lab.floor() == len(lab.states) - 1, (
                    f"step {i}: a sync=True commit returned before it was durable")
        disk.before_io = None
        lab.crash_point()
    return lab


# --- the crash points ------------------------------------------------------------------


def test_sync_commits_survive_power_loss_at_every_io(tmp_path, small_steps):
    """sync=True: each image holds the last commit that returned, or the one in flight."""
    lab = run_workload(tmp_path, 1, round(150 * SCALE), {"sync": True})
    lab.assert_clean()
    assert lab.point > 100


def test_nosync_commits_roll_back_to_a_durable_commit_at_every_io(tmp_path, small_steps):
    """sync=False: each image rolls back to a commit at least as new as the last steady
    commit or env.sync(), and consistent; a kill -9 loses nothing acknowledged."""
    lab = run_workload(tmp_path, 2, round(200 * SCALE), {"sync": False})
    lab.assert_clean()
    assert lab.point > 100


def test_nosync_with_default_thresholds_survives_power_loss(tmp_path):
    """sync=False with kvmm's own growth and autosync thresholds (MiBs): the file grows
    once and commits stay weak until env.sync(); overflow values up to 200 KB."""
    lab = run_workload(tmp_path, 3, round(60 * SCALE), {"sync": False}, huge=200_000)
    lab.assert_clean()


def test_metasync_off_keeps_the_database_consistent(tmp_path, small_steps):
    """sync=True, metasync=False: the last commit may be lost, never the consistency."""
    lab = run_workload(tmp_path, 4, round(80 * SCALE), {"sync": True, "metasync": False})
    lab.assert_clean()


def test_large_pages_torn_across_sectors_and_os_pages(tmp_path, small_steps):
    """16 KiB pages: a page is four page-cache pages, each kept, torn or lost alone."""
    lab = run_workload(tmp_path, 5, round(80 * SCALE), {"sync": False, "page_size": 16384})
    lab.assert_clean()


def test_power_loss_stops_commits_dead(tmp_path, small_steps, monkeypatch):
    """For n = 1, 2, ...: the n-th write, sync or truncate of the workload raises
    PowerLoss; the commit stops there, and the images of that instant are checked."""
    monkeypatch.setattr("kvmm.txn._STRICT", False)  # the replays are many; check images
    steps = round(30 * SCALE)
    seed = 6
    for options in ({"sync": True}, {"sync": False}):
        workload, states = make_workload(seed, steps, sync_steps=not options["sync"])
        n = 0
        while True:
            n += 1
            run = tmp_path / f"{options['sync']}-{n}"
            run.mkdir()
            path, disk = start(run, options)
            disk.fail_at = n
            lab = Lab(run, seed, disk, path, options, states[0])
            env = kvmm.Environment(path, subdir=False, max_dbs=8,
                            datafile_class=disk.datafile_class(), **options)
            try:
                for i, step in enumerate(workload):
                    lab.inflight = states[i + 1] if step[0] == "commit" else None
                    run_step(env, step)
                    lab.acknowledged(states[i + 1], step)
            except PowerLoss:
                lab.crash_point()
                lab.assert_clean()
                continue
            finally:
                env.close()
            break  # n passed the workload's last I/O
        assert n > 3 * steps


def test_crash_during_creation_leaves_a_file_that_opens(tmp_path):
    """Creating the data file (two metas, one sync): a power loss at any instant leaves
    either no database or the empty one, and the file opens."""
    path = str(tmp_path / "data.kvmm")
    disk = Disk()
    lab = Lab(tmp_path, 7, disk, path, {}, {None: {}})
    disk.before_io = lab.crash_point
    for _ in range(round(50 * SCALE)):
        kvmm.Environment(path, subdir=False, datafile_class=disk.datafile_class()).close()
        os.remove(path)
        disk.durable, disk.pending = bytearray(), []
    lab.assert_clean()


# --- precise outcomes: each found by the workloads above, kept as a short case ------


def reboot_and_open(tmp_path, image: bytes):
    """Write ``image`` as a data file and open it after a (simulated) reboot."""
    path = str(tmp_path / "image.kvmm")
    with open(path, "wb") as f:
        f.write(image)
    with boot(os.urandom(16)):
        return kvmm.open(path, subdir=False, lock=False, max_dbs=8)


def test_torn_meta_write_falls_back_and_passes_check(tmp_path):
    """The power fails while a commit's meta is written, after its pages were synced:
    only the meta's first 512-byte sector lands, so the meta fails its checksum. The
    file falls back to the commit before, whole — and ``kvmm check`` must pass it: a
    torn meta in the slot not in use is what a power loss leaves, not damage."""
    path, disk = start(tmp_path, {})
    images = []

    def at_the_meta_sync(disk, kind):
        if kind == "sync" and disk.pending and disk.pending[-1][1] < disk.meta_bytes:
            images.append(disk.outcome(
                lambda off, data: data[:512] if off < disk.meta_bytes else data, False))

    with kvmm.Environment(path, subdir=False, datafile_class=disk.datafile_class()) as env:
        for value in (bytes(1000), bytes(999)):  # the second frees ~40 pages, so the
            with env.begin(write=True) as txn:  # next meta lists them: > 1 sector long
                for i in range(150):
                    txn.put(b"k%03d" % i, value)
        disk.before_io = at_the_meta_sync
        with env.begin(write=True) as txn:
            txn.put(b"k000", b"new")
    assert len(disk.last_meta.rstrip(b"\0")) > 512
    env = reboot_and_open(tmp_path, images[-1])
    try:
        assert read_all(env)[None][b"k000"] == bytes(999)
        assert check_env(env) == []
    finally:
        env.close()


def test_weak_commit_never_cuts_the_file_below_the_steady_meta(tmp_path, small_steps):
    """sync=False: a weak commit that gives the file's free tail back truncates the
    file; the truncate may reach the disk while the weak meta does not (file systems
    journal a size change on their own). After the power loss the file falls back to
    the steady commit, whose meta names pages past the new end: it must still open."""
    path, disk = start(tmp_path, {"sync": False})
    with kvmm.Environment(path, subdir=False, sync=False,
                   datafile_class=disk.datafile_class()) as env:
        with env.begin(write=True) as txn:
            for i in range(40):
                txn.put(b"big%02d" % i, bytes(8000))
        reader = env.begin()  # keeps the deleting commit from giving the space back
        with env.begin(write=True) as txn:
            for i in range(40):
                txn.delete(b"big%02d" % i)
        reader.abort()
        env.sync()  # steady: 80 free pages at the end of the file
        steady_pages = env.info()["last_pgno"] + 1
        with env.begin(write=True) as txn:  # weak: takes the free tail back
            txn.put(b"small", b"value")
        assert env.info()["last_pgno"] + 1 < steady_pages // 2
    env = reboot_and_open(tmp_path, disk.outcome(lambda off, data: None, truncates=True))
    try:
        assert check_env(env) == []
        assert read_all(env) == {None: {}}
    finally:
        env.close()


def test_metasync_off_never_overwrites_pages_of_the_last_synced_meta(tmp_path):
    """metasync=False leaves each commit's meta unsynced until the next commit syncs
    its pages. Commit 3's pages reach the disk before commit 2's meta does, so they
    must not overwrite pages of commit 1, the last commit whose meta is durable — else
    a power loss there leaves commit 1 with a page of commit 3 (py-lmdb: "a system
    crash may undo the last committed transaction", never the database's integrity)."""
    path, disk = start(tmp_path, {})
    images = []

    def at_the_data_sync(disk, kind):
        if kind == "sync":
            images.append(disk.outcome(
                lambda off, data: None if off < disk.meta_bytes else data, True))

    with kvmm.Environment(path, subdir=False, metasync=False,
                   datafile_class=disk.datafile_class()) as env:
        for value in (b"1", b"2", b"3"):
            disk.before_io = at_the_data_sync if value == b"3" else None
            with env.begin(write=True) as txn:
                txn.put(b"a", value)
    env = reboot_and_open(tmp_path, images[0])
    try:
        assert check_env(env) == []
        assert read_all(env) == {None: {b"a": b"1"}}
    finally:
        env.close()


@pytest.mark.parametrize("size", [4096, 8192])
def test_file_left_by_a_crashed_creation_opens(tmp_path, size):
    """Creating a database writes both metas and syncs. A power loss before that sync
    can leave the new file at its full length but with the metas' sectors never
    written (zeros): opening it must work (it holds no commit: the empty database)."""
    env = reboot_and_open(tmp_path, bytes(size))
    try:
        assert check_env(env) == []
        assert read_all(env) == {None: {}}
    finally:
        env.close()


def test_reclaim_keeps_the_records_of_named_databases_it_moves(tmp_path):
    """Found by tools/torture.py. A commit that gives the file's tail back moves the
    tree pages pinning it (reclaim), here the pages of named database n, which this
    transaction read but did not change. n's record in the main tree must name the
    moved pages — else n's old pages are freed and cut off while its record still
    points at them."""
    with kvmm.open(str(tmp_path / "db"), max_dbs=2) as env:
        with env.begin(write=True) as txn:
            for i in range(4000):
                txn.put(b"k%05d" % i, bytes(100))
        with env.begin(write=True) as txn:  # n's pages: at the end of the file
            db = env.open_db(b"n", txn=txn)
            for i in range(50):
                txn.put(b"n%03d" % i, bytes(100), db=db)
        with env.begin(write=True) as txn:  # most of the file is free now
            for i in range(4000):
                txn.delete(b"k%05d" % i)
        for r in range(3):
            with env.begin(write=True) as txn:
                txn.get(b"n000", db=db)  # n is opened, not changed
                txn.put(b"k%d" % r, b"x")
            assert check_env(env) == []
        with env.begin() as txn:
            assert dict(txn.cursor(db=db).iternext()) == {
                b"n%03d" % i: bytes(100) for i in range(50)}


# --- process kills ---------------------------------------------------------------------


def test_torture_survives_fifty_kills(tmp_path):
    """tools/torture.py: a writer child SIGKILLed 50 times at random instants; after each
    kill the database opens, passes the check and holds the last acknowledged commit or
    the one in flight."""
    kills = max(50, round(50 * SCALE))
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "torture.py"), "--kills", str(kills),
         "--seed", "11", "--dir", str(tmp_path / "torture"), "--ops", "8"],
        capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"kills {kills}, survived {kills}, lost 0" in out.stdout, out.stdout[-3000:]
