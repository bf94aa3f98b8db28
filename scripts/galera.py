"""A 3-node MariaDB Galera cluster on loopback, for the tests marked ``galera``
and the cluster benchmark. No system service or system file is touched: every
node has its own data directory, socket, log and ports under one folder.

    python scripts/galera.py start            # bootstrap if needed, wait until synced
    python scripts/galera.py status           # one line per node
    python scripts/galera.py stop             # clean shutdown, last node first
    python scripts/galera.py stop --node 3    # stop one node (the others keep running)
    python scripts/galera.py start --node 3   # rejoin it, wait until synced
    python scripts/galera.py urls             # SQLAlchemy URLs, one per node

Needs ``mariadbd``, ``mariadb-install-db``, the ``mariadb`` client, rsync and
the Galera provider (Debian: mariadb-server, galera-4, rsync). The folder is
``$ONCONFLICT_GALERA_DIR`` or ``/tmp/onconflict-galera``. Client ports are
3311, 3312, 3313 (``$ONCONFLICT_GALERA_PORT`` moves the first; the others follow).

Facts this relies on (measured on Debian 12, MariaDB 10.11, galera-4 26.4):
when the server runs as root, the rsync state transfer runs its daemon as
``nobody``, so the data directories are made world-writable; the first node is
bootstrapped alone, shut down, and its data directory copied to the others, so
they join by an empty incremental transfer instead of a full one; each node has
its own client, group, IST and SST ports; ``root@127.0.0.1`` is created for TCP
logins with an empty password (a local test cluster, like the README's servers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NODES = 3
BASE = Path(os.environ.get("ONCONFLICT_GALERA_DIR", "/tmp/onconflict-galera"))
FIRST_PORT = int(os.environ.get("ONCONFLICT_GALERA_PORT", "3311"))
PROVIDER_PATHS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")
CLUSTER = "onconflict"


@dataclass(frozen=True)
class Node:
    number: int

    @property
    def name(self) -> str:
        return f"node{self.number}"

    @property
    def port(self) -> int:
        return FIRST_PORT + self.number - 1

    @property
    def group_port(self) -> int:  # gcomm; IST and SST follow it
        return 4560 + 10 * self.number

    @property
    def home(self) -> Path:
        return BASE / self.name

    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def socket(self) -> Path:
        return self.home / "mariadb.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "mariadb.pid"

    @property
    def config(self) -> Path:
        return self.home / "my.cnf"

    @property
    def log(self) -> Path:
        return self.home / "error.log"

    def url(self, driver: str = "aiomysql", database: str = "test") -> str:
        return f"mysql+{driver}://root@127.0.0.1:{self.port}/{database}"


ALL = [Node(n) for n in range(1, NODES + 1)]


def provider() -> str | None:
    return next((p for p in PROVIDER_PATHS if Path(p).exists()), None)


def missing_tools() -> list[str]:
    """What this machine lacks to run the cluster (empty if nothing)."""
    wanted = ["mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin", "rsync"]
    missing = [t for t in wanted if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if provider() is None:
        missing.append("galera provider (libgalera_smm.so, Debian package galera-4)")
    return missing


def mariadbd() -> str:
    return shutil.which("mariadbd") or "/usr/sbin/mariadbd"


def write_config(node: Node) -> None:
    addresses = ",".join(f"127.0.0.1:{n.group_port}" for n in ALL)
    options = ";".join(
        [
            f"gmcast.listen_addr=tcp://127.0.0.1:{node.group_port}",
            f"ist.recv_addr=127.0.0.1:{node.group_port + 1}",
            "gcache.size=64M",
            # loopback cluster on a small machine: notice a stopped node quickly
            "evs.suspect_timeout=PT3S",
            "evs.inactive_timeout=PT6S",
        ]
    )
    node.config.write_text(
        f"""[mariadbd]
user = root
datadir = {node.datadir}
socket = {node.socket}
pid-file = {node.pidfile}
log-error = {node.log}
port = {node.port}
bind-address = 127.0.0.1
skip-name-resolve
performance_schema = OFF
innodb_buffer_pool_size = 64M
innodb_log_file_size = 32M
innodb_flush_log_at_trx_commit = 2
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
max_connections = 400
wsrep_on = ON
wsrep_provider = {provider()}
wsrep_cluster_name = {CLUSTER}
wsrep_cluster_address = gcomm://{addresses}
wsrep_node_name = {node.name}
wsrep_node_address = 127.0.0.1
wsrep_sst_receive_address = 127.0.0.1:{node.group_port + 2}
wsrep_sst_method = rsync
wsrep_provider_options = "{options}"
"""
    )


def sql(node: Node, statement: str) -> str:
    done = subprocess.run(
        ["mariadb", f"--socket={node.socket}", "-uroot", "-N", "-B", "-e", statement],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode:
        raise RuntimeError(done.stderr.strip())
    return done.stdout.strip()


def pid(node: Node) -> int | None:
    """The node's server process, or None. A pid file left by a killed server
    may name a process that has since reused the number: the command line must
    be this node's mariadbd."""
    try:
        value = int(node.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{value}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return value if str(node.config).encode() in cmdline else None


def log_tail(node: Node, lines: int = 25) -> str:
    try:
        text = node.log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def clean_shutdown(node: Node) -> bool:
    """Whether the node's Galera state records a position (a clean stop).
    A killed server leaves ``seqno: -1``: its position is unknown, and a node
    started from it gets a new history the others cannot join by IST."""
    try:
        state = (node.datadir / "grastate.dat").read_text()
    except OSError:
        return False
    return "seqno:   -1" not in state and "seqno: -1" not in state


def wsrep(node: Node) -> dict[str, str]:
    try:
        out = sql(node, "SHOW GLOBAL STATUS LIKE 'wsrep_%'")
    except (RuntimeError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


class Failed(Exception):
    pass


def wait(what: str, check: object, timeout: float = 120.0, node: Node | None = None) -> None:
    """Wait for check(); give up at the timeout or, when node is given, as soon
    as that node's server has exited (with the end of its log)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if node is not None and pid(node) is None:
            raise Failed(f"{node.name} exited while waiting for {what}:\n{log_tail(node)}")
        if time.monotonic() > deadline:
            raise Failed(f"timed out waiting for {what}" + (f":\n{log_tail(node)}" if node else ""))
        time.sleep(0.5)


def launch(node: Node, *, new_cluster: bool) -> None:
    node.home.mkdir(parents=True, exist_ok=True)
    os.chmod(node.home, 0o777)
    write_config(node)
    args = [mariadbd(), f"--defaults-file={node.config}"]
    if new_cluster:
        args.append("--wsrep-new-cluster")
    # files the server creates must stay writable by the rsync state transfer,
    # which runs as nobody when the server runs as root
    env = {**os.environ, "UMASK": "0666", "UMASK_DIR": "0777"}
    with open(node.home / "stdout.log", "ab") as out:
        subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip
    # the pid file is written a moment after the process starts
    try:
        wait(f"{node.name} to write its pid file", lambda: pid(node) is not None, timeout=60)
    except Failed as error:
        raise Failed(f"{error}:\n{log_tail(node)}") from None


def synced(node: Node) -> bool:
    status = wsrep(node)
    return status.get("wsrep_local_state_comment") == "Synced" and status.get("wsrep_ready") == "ON"


def initialise() -> None:
    """Bootstrap node 1 alone, create the login and database, copy it to the others."""
    first = ALL[0]
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o777)
    first.home.mkdir(parents=True, exist_ok=True)
    os.chmod(first.home, 0o777)
    write_config(first)
    subprocess.run(
        ["mariadb-install-db", f"--defaults-file={first.config}", "--skip-test-db"],
        check=True,
        capture_output=True,
    )
    launch(first, new_cluster=True)
    wait("node1 to bootstrap", lambda: synced(first), node=first)
    sql(
        first,
        "CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';"
        "GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;"
        "CREATE DATABASE IF NOT EXISTS test;",
    )
    stop_node(first)
    for node in ALL[1:]:
        shutil.rmtree(node.home, ignore_errors=True)
        node.home.mkdir(parents=True)
        os.chmod(node.home, 0o777)
        shutil.copytree(first.datadir, node.datadir)
    for node in ALL:
        for path in [node.datadir, *node.datadir.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)


def set_safe_to_bootstrap(node: Node) -> None:
    state = node.datadir / "grastate.dat"
    if state.exists():
        text = state.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1")
        state.write_text(text)


def start(numbers: list[int]) -> None:
    if missing := missing_tools():
        raise SystemExit("galera: missing " + ", ".join(missing))
    wanted = [n for n in ALL if n.number in numbers]
    down = not any(pid(n) for n in ALL)
    if down and ALL[0].datadir.exists() and not any(clean_shutdown(n) for n in ALL):
        # every server was killed (say, the session that ran them ended): no node
        # knows its position, so node 1 would start a new history and the others
        # would need full transfers. It is a test cluster: rebuild it.
        print("galera: no node was shut down cleanly; rebuilding the cluster", flush=True)
        destroy()
    try:
        bring_up(wanted)
    except Failed as error:
        survivors = healthy()
        if not rebuild_after_failure(survivors):
            # a node failed to start or join while others serve: they stay as
            # they are (a healthy cluster is never deleted to start one node)
            names = ", ".join(n.name for n in survivors)
            raise SystemExit(f"galera: {error}\ngalera: {names} still running") from None
        print(f"galera: {error}\ngalera: rebuilding the cluster", file=sys.stderr, flush=True)
        destroy()
        wanted = ALL
        try:
            bring_up(wanted)
        except Failed as again:
            raise SystemExit(f"galera: {again}") from None
    size = wsrep(wanted[0]).get("wsrep_cluster_size")
    print(f"galera: {', '.join(n.name for n in wanted)} synced; cluster size {size}")


def healthy() -> list[Node]:
    """The nodes whose server runs and is synced with the cluster."""
    return [n for n in ALL if pid(n) is not None and synced(n)]


def rebuild_after_failure(survivors: list[Node]) -> bool:
    """Whether a failed start may delete the cluster and build it anew: only
    when no node is left serving. A node that fails to start or to join (say
    ``start --node 3``) is reported, and the nodes that run are kept."""
    return not survivors


def bring_up(wanted: list[Node]) -> None:
    if not ALL[0].datadir.exists():
        initialise()
    if not any(pid(n) for n in ALL):
        # the whole cluster is down (the script stops it last node first): node 1
        # starts a new cluster from its own state
        first = ALL[0]
        set_safe_to_bootstrap(first)
        launch(first, new_cluster=True)
        wait("node1 to bootstrap", lambda: synced(first), timeout=180, node=first)
    for node in wanted:
        if pid(node) is None:
            launch(node, new_cluster=False)
    for node in wanted:
        wait(f"{node.name} to sync", lambda node=node: synced(node), timeout=300, node=node)  # type: ignore[misc]


def destroy() -> None:
    for node in ALL:  # any order: nothing is kept
        value = pid(node)
        if value is not None:
            os.kill(value, signal.SIGKILL)
            wait(f"{node.name} to exit", lambda node=node: pid(node) is None, timeout=60)  # type: ignore[misc]
    shutil.rmtree(BASE, ignore_errors=True)


def stop_node(node: Node) -> None:
    value = pid(node)
    if value is None:
        return
    os.kill(value, signal.SIGTERM)
    wait(f"{node.name} to stop", lambda: pid(node) is None, timeout=120)


def stop(numbers: list[int]) -> None:
    for node in reversed([n for n in ALL if n.number in numbers]):
        stop_node(node)
        print(f"galera: {node.name} stopped")


def status() -> int:
    up = 0
    for node in ALL:
        state = wsrep(node) if pid(node) else {}
        if state:
            up += 1
        print(
            f"{node.name} port {node.port}: "
            + (
                f"{state.get('wsrep_local_state_comment')}, cluster size "
                f"{state.get('wsrep_cluster_size')}, {state.get('wsrep_cluster_status')}"
                if state
                else "down"
            )
        )
    return 0 if up == NODES else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "urls", "destroy"])
    parser.add_argument(
        "--node", type=int, action="append", choices=range(1, NODES + 1), help="only this node"
    )
    args = parser.parse_args(argv)
    numbers = args.node or [n.number for n in ALL]
    try:
        return run(args.command, numbers)
    except Failed as error:
        raise SystemExit(f"galera: {error}") from None


def run(command: str, numbers: list[int]) -> int:
    if command == "start":
        start(numbers)
    elif command == "stop":
        stop(numbers)
    elif command == "destroy":
        destroy()
    elif command == "urls":
        print(" ".join(ALL[n - 1].url() for n in numbers))
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
