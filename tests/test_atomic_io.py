"""atomic_io: atomic writes with the umask's mode, stale temporaries of killed processes, exclusive folder claims."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from una_bundle.scripts.data.atomic_io import (
    LOCK_NAME,
    TEMP_TAG,
    FolderInUseError,
    claim_folder,
    remove_stale_temps,
    write_atomic,
    write_together,
)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = write_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
    assert path.read_text() == "{}"
    assert path.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    old = tmp_path / "a.txt"
    old.write_text("old")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_together({tmp_path / "b.txt": lambda tmp: tmp.write_text("b"), old: failing})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and old.read_text() == "old"


def _run_and_kill(code: str, cwd) -> None:
    """Run ``code`` in a child python that ends by SIGKILL-ing itself (a real kill, no clean-up of any kind)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def test_temporaries_of_a_killed_process_are_removed_others_kept(tmp_path):
    _run_and_kill(
        """
        import os, signal
        from pathlib import Path
        from una_bundle.scripts.data.atomic_io import write_atomic

        def killed(tmp):
            tmp.write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)

        write_atomic(Path("out.nii.gz"), killed)
        """,
        tmp_path,
    )
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.nii.gz" + TEMP_TAG) and left[0].endswith(".nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()  # never a partial file under the final name
    mine = tmp_path / f".other.txt{TEMP_TAG}{os.getpid()}-00000000.txt"  # a live process's write in progress
    mine.write_text("in progress")
    legacy = tmp_path / ".out.json.k2j4h1"  # tempfile.mkstemp name of an older version, for one of our outputs
    legacy.write_text("partial")
    unrelated = tmp_path / ".hidden"
    unrelated.write_text("keep")
    removed = remove_stale_temps(tmp_path, names=["out.json"])
    assert sorted(p.name for p in removed) == sorted([left[0], legacy.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, unrelated.name])


def test_a_claimed_folder_is_refused_to_another_process_until_its_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from una_bundle.scripts.data.atomic_io import claim_folder; "
            f"c = claim_folder({str(tmp_path)!r}); print('claimed', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(FolderInUseError, match=f"in use by another run \\(pid {holder.pid}") as info:
            claim_folder(tmp_path)
        assert isinstance(info.value, FileExistsError) and str(tmp_path) in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with claim_folder(tmp_path):  # the killed holder's lock is gone with it
        with pytest.raises(FolderInUseError):  # and a claim is exclusive within one process too
            claim_folder(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()  # released: nothing left behind
