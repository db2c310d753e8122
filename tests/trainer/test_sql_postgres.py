"""The SQL data source against a real PostgreSQL server, started in a temporary directory.

Needs the server binaries (`initdb`, `pg_ctl`: Debian's `postgresql` package) and the psycopg
driver (`pip install 'psycopg[binary]'`); the test is skipped, saying which is missing, otherwise.
PostgreSQL refuses to run as root: as root, the server runs as the `postgres` (or `nobody`) user.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubetune_trainer.contract.config import DataSource, SqlSource, TrainerConfig
from kubetune_trainer.data.quality import map_rows
from kubetune_trainer.data.sources import load_source
from kubetune_trainer.errors import ConfigError


def pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(bindir, name), os.X_OK):
            return os.path.join(bindir, name)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[int, int, Callable[[], None] | None]:
    """uid, gid and a preexec_fn dropping root for the server (None when not root)."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid, functools.partial(_drop_root, entry.pw_uid, entry.pw_gid)
    pytest.skip("running as root and there is neither a postgres nor a nobody user to run PostgreSQL as")


def _drop_root(uid: int, gid: int) -> None:
    os.setgid(gid)
    os.setuid(uid)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed (pip install 'psycopg[binary]')")
    uid, gid, drop = _as_user()
    root = Path(tempfile.mkdtemp(prefix="kubetune-pg-"))
    os.chown(root, uid, gid)
    data, port = root / "data", free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    pid = None
    try:
        subprocess.run([initdb, "-D", str(data), "-U", "kubetune", "-A", "trust", "-E", "UTF8", "--locale=C",
                        "--no-sync"], check=True, capture_output=True, preexec_fn=drop, env=env, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w",
                                  "-t", "60", "start"], capture_output=True, text=True, preexec_fn=drop, env=env,
                                 timeout=90)
        if (data / "postmaster.pid").exists():
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        assert started.returncode == 0, started.stderr + (root / "server.log").read_text()
        yield f"postgresql+psycopg://kubetune@127.0.0.1:{port}/postgres"
    finally:
        if pid is not None:  # fast shutdown of the server we started, by its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_sql_source_reads_training_rows_from_postgresql(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    rows = [(f"question {i}", f"answer {i}", "train" if i < 5 else "holdout") for i in range(7)]
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("create table pairs (id serial primary key, q text, a text, split text, chat jsonb)")
        for q, a, split in rows:
            chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            conn.execute("insert into pairs (q, a, split, chat) values (%s, %s, %s, %s)", (q, a, split, Jsonb(chat)))

    monkeypatch.setenv("TRAIN_DB", postgres_url)
    source = DataSource(sql=SqlSource(
        query="select q as prompt, a as completion from pairs where split = 'train' order by id", url_env="TRAIN_DB"))
    loaded = load_source(source)
    assert loaded.rows == [{"prompt": q, "completion": a} for q, a, split in rows if split == "train"]
    assert loaded.origins == [f"sql row {i}" for i in range(1, 6)]
    assert load_source(source).digest() == loaded.digest()  # same rows, same digest

    # A jsonb column arrives as a list of turns and maps onto chat records.
    config = TrainerConfig.model_validate({
        "jobName": "pg", "task": "instruction", "baseModel": {"uri": "/m"}, "output": {"root": "/o"},
        "data": {"train": {"sql": {"query": "select chat from pairs order by id", "urlEnv": "TRAIN_DB"}},
                 "fields": {"messages": "chat"}},
    })
    mapped = map_rows(load_source(config.data.train), config)
    assert not mapped.issues and len(mapped.records) == 7
    assert mapped.records[6].data["messages"][-1] == {"role": "assistant", "content": "answer 6"}

    with pytest.raises(ConfigError, match=r'the query failed: .*relation "nope" does not exist'):
        load_source(DataSource(sql=SqlSource(query="select * from nope", url_env="TRAIN_DB")))
