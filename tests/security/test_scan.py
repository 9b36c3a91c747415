"""The byte scan of the deletion tests (``files_containing``) runs over the service's
var folder, the test database included, while this process holds SQLite locks on it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from tests.security.conftest import files_containing


def _exclusive_from_another_process(db) -> str:
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0)\n"
        "try:\n"
        "    c.execute('BEGIN EXCLUSIVE')\n"
        "    print('granted')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print(e)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60
    ).stdout.strip()


def test_scanning_a_database_keeps_this_processs_locks_on_it(tmp_path):
    # An open read transaction holds a SHARED lock: no other process may write.
    db = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (secret TEXT)")
    conn.execute("INSERT INTO t VALUES ('needle-123')")
    conn.execute("BEGIN")
    conn.execute("SELECT * FROM t").fetchall()
    try:
        assert _exclusive_from_another_process(db) == "database is locked"
        assert files_containing(tmp_path, "needle-123") == [db]
        # Had this process opened and closed the file itself, POSIX would have dropped
        # its lock, and the other process would have been granted the database.
        assert _exclusive_from_another_process(db) == "database is locked"
    finally:
        conn.close()


def test_the_scan_skips_symlinks_and_finds_nothing_when_nothing_matches(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "hit.bin").write_bytes(b"\x00\x01needle-9\x00")
    (tmp_path / "link").symlink_to(tmp_path / "a" / "hit.bin")
    assert files_containing(tmp_path, "needle-9") == [tmp_path / "a" / "hit.bin"]
    assert files_containing(tmp_path, "absent") == []
    assert files_containing(tmp_path / "missing", "needle-9") == []
