#!/usr/bin/env python3
"""make bench-fleet: a fleet's fan-out at scale, on this machine. A benchmark, not a test.

A throw-away PostgreSQL, two `jitd server` replicas (release build), and BENCH_HOSTS (default 10,000)
simulated hosts of one environment, each with its own enrolled identity (key, certificate, `hosts` row),
each holding its grant stream (mutual TLS) against one of the replicas: GET /v1/grants/events (server-sent
events, as host agents do), or with BENCH_STREAM=poll the long-poll GET /v1/grants/stream (older agents).
Prints: approval -> grant delivered to all hosts (p50, p99, max), revoke -> delivered to all (same),
requests filed per second through the API, the replicas' RSS and CPU, and the check latency on a fleet
host's agent beside a single-host agent (bench/run.py's socket round trip).

The simulated hosts' identities are made here in bulk, with the fleet CA's key, exactly as `jitd server`
would issue them (same subject, SAN URIs, key usage; the serial in the hosts row): a bench-only path that
is not in the shipped server. Their streams are held by jit-bench-hosts (bench/FleetHosts, SwiftNIO, built
with the release build) so that the load generator takes little of the cores the replicas share; with
BENCH_CLIENT=python (or without that tool) by plain asyncio + ssl in BENCH_WORKERS processes.
Results go to bench/fleet-results.json.
"""
import asyncio
import datetime
import importlib.util
import json
import multiprocessing as mp
import os
import queue
import resource
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
os.environ.setdefault("JIT_BIN", os.path.join(REPO, ".build", "release"))

from conftest import Users, wait_for  # noqa: E402
from fleet import PROD, ControlPlane, FleetAgent, Postgres, fleet_supported, server_extra  # noqa: E402

N_HOSTS = int(os.environ.get("BENCH_HOSTS", "10000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
FILE_SECONDS = float(os.environ.get("BENCH_FILE_SECONDS", "5"))


def load_bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(REPO, "bench", "run.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


# --- Identities in bulk (bench only).

def bulk_identities(cp, n, outdir, environment=PROD, labels=("db",)):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    with open(os.path.join(cp.dir, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(cp.dir, "ca.pem"), "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(hours=6)
    rows = []
    os.makedirs(outdir, exist_ok=True)
    for i in range(n):
        name = f"sim{i:05d}"
        key = ec.generate_private_key(ec.SECP256R1())
        serial_bytes = bytes([secrets.randbelow(127) + 1]) + secrets.token_bytes(18)  # positive, no leading zero: DER content = these bytes
        uris = [f"urn:jit:host:{name}", f"urn:jit:environment:{environment}"] + [f"urn:jit:label:{l}" for l in labels]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jit-access fleet"),
                                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, environment),
                                         x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(int.from_bytes(serial_bytes, "big"))
                .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        with open(os.path.join(outdir, name + ".pem"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        rows.append(f"{name}\t{environment}\t{{{','.join(labels)}}}\t{serial_bytes.hex()}\t{not_after.isoformat()}\n")
    p = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(cp.pg.port), "-U", "postgres", "-d", cp.database, "-v", "ON_ERROR_STOP=1",
                        "-c", "COPY hosts (name, environment, labels, cert_serial, not_after) FROM STDIN"],
                       input="".join(rows), capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit("bench-fleet: cannot insert the simulated hosts: " + p.stderr)
    return [f"sim{i:05d}" for i in range(n)]


# --- The simulated hosts' streams (worker processes).

async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def one_host(name, pem, port, ca, ready, seen, stop, connect_gate):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(pem)
    cursor, first = 0, True
    while not stop.is_set():
        try:
            async with connect_gate:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
            while not stop.is_set():
                # The first call answers at once (wait=0): the host has its state and is then streaming.
                wait = 0 if first else 50
                writer.write(f"GET /v1/grants/stream?cursor={cursor}&wait={wait} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                status, body = await read_response(reader)
                t = time.time()
                if status != 200:
                    await asyncio.sleep(1)
                    continue
                data = json.loads(body)
                cursor = data["cursor"]
                for g in data.get("changes", []):
                    seen.append((g["id"], g["state"], t))
                if first:
                    first = False
                    ready.append(name)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            await asyncio.sleep(0.5)


def worker(idx, names, certdir, ports, ca, q_ready, q_out, ev_stop):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)

    async def main():
        ready, seen = [], []
        stop = asyncio.Event()
        gate = asyncio.Semaphore(64)
        tasks = [asyncio.create_task(one_host(n, os.path.join(certdir, n + ".pem"), ports[i % len(ports)], ca, ready, seen, stop, gate))
                 for i, n in enumerate(names)]
        reported = 0
        while not ev_stop.is_set():
            await asyncio.sleep(0.05)
            if len(ready) != reported:
                reported = len(ready)
                q_ready.put((idx, reported))
            if seen:
                batch, seen[:] = list(seen), []
                q_out.put(batch)
        stop.set()
        for t in tasks:
            t.cancel()
    asyncio.run(main())


def read_tool(tool, q_ready, q_out):
    """jit-bench-hosts' lines: 'ready N' and 'seen ID STATE T', passed on as the Python workers pass theirs."""
    for line in tool.stdout:
        p = line.split()
        if len(p) == 2 and p[0] == "ready":
            q_ready.put((0, int(p[1])))
        elif len(p) == 4 and p[0] == "seen":
            q_out.put([(int(p[1]), p[2], float(p[3]))])


# --- Measures.

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(pg):
    """CPU of every process of the throw-away cluster (postmaster and backends: children of its postmaster)."""
    try:
        with open(os.path.join(pg.data, "postmaster.pid")) as f:
            master = int(f.readline())
    except (OSError, ValueError):
        return 0.0
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            if int(d) == master or int(parts[1]) == master:
                total += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return total


def pcts(xs):
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    def p(q):
        return round(xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000, 1)
    return {"n": len(xs), "p50_ms": p(50), "p99_ms": p(99), "max_ms": round(xs[-1] * 1000, 1)}


def control(cp_socket, user, *args):
    from conftest import JIT
    cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", JIT, *args, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "JIT_SOCKET": cp_socket})
    if p.returncode != 0:
        raise SystemExit(f"bench-fleet: jit {' '.join(args)} failed: {p.stderr}")
    return json.loads(p.stdout)


def main():
    if os.geteuid() != 0:
        print("make bench-fleet needs root (PostgreSQL, throw-away users).", file=sys.stderr)
        return 2
    # With the server's decisions (f-decide's socket and policy) a request is filed by a real fleet agent and
    # approved with `jit --socket`; without them (or BENCH_APPROVE=sql) the grant is written in SQL, as the
    # engine writes it, and "approval" is that commit.
    full = fleet_supported(server_extra("{dir}")) is None and os.environ.get("BENCH_APPROVE") != "sql"
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    tmp = tempfile.mkdtemp(prefix="jitbenchfleet")
    os.chmod(tmp, 0o755)
    users, pg = Users(), Postgres()
    cp, procs, agents, ev_stop = None, [], [], mp.Event()
    results = {"hosts": N_HOSTS, "replicas": 2, "workers": WORKERS}
    try:
        pg.start()
        d = os.path.join(tmp, "cp")
        os.makedirs(d)
        cp = ControlPlane(pg, tmp, extra=server_extra(d) if full else "").start(count=2)
        cp.server_socket = os.path.join(d, "server.sock")
        ca = os.path.join(cp.dir, "ca.pem")
        req, appr = users.user("req", ["jit-requesters"]), users.user("appr", ["jit-approvers"])
        t0 = time.time()
        names = bulk_identities(cp, N_HOSTS, os.path.join(tmp, "certs"))
        results["identities_s"] = round(time.time() - t0, 1)
        print(f"bench-fleet: {N_HOSTS} identities made and enrolled in {results['identities_s']} s")

        # The fleet has granted before, as every fleet but a brand-new one has: its version is past 0. (A host at
        # cursor 0 asks for a reset, which is read from PostgreSQL at each wake-up: what the very first grant of a
        # fleet costs, once, not what a fan-out costs.)
        warm, _ = sql_grant(cp, req)
        cp.pg.sql(f"UPDATE grants SET state = 'revoked', ended_at = now(), ended_by = 'bench warm-up' WHERE id = {warm}", db=cp.database)
        hosts_tool = os.path.join(os.environ["JIT_BIN"], "jit-bench-hosts")
        native = os.environ.get("BENCH_CLIENT", "swift") == "swift" and os.access(hosts_tool, os.X_OK)
        stream = "long-poll" if os.environ.get("BENCH_STREAM") == "poll" else "server-sent events"
        results["simulated_hosts"] = f"jit-bench-hosts (SwiftNIO, 2 threads, {stream})" if native else f"Python asyncio, {WORKERS} processes, long-poll"
        if native:
            q_ready, q_out = queue.Queue(), queue.Queue()
            names_file = os.path.join(tmp, "names")
            with open(names_file, "w") as f:
                f.write("\n".join(names) + "\n")
            tool = subprocess.Popen([hosts_tool, ca, os.path.join(tmp, "certs"), names_file, ",".join(map(str, cp.ports))],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            procs.append(tool)
            threading.Thread(target=read_tool, args=(tool, q_ready, q_out), daemon=True).start()
            counts = [0]
        else:
            q_ready, q_out = mp.Queue(), mp.Queue()
            shares = [names[i::WORKERS] for i in range(WORKERS)]
            for idx, share in enumerate(shares):
                p = mp.Process(target=worker, args=(idx, share, os.path.join(tmp, "certs"), cp.ports, ca, q_ready, q_out, ev_stop), daemon=True)
                p.start()
                procs.append(p)
            counts = [0] * WORKERS
        t0 = time.time()
        while sum(counts) < N_HOSTS and time.time() - t0 < 300:
            try:
                idx, n = q_ready.get(timeout=1)
            except Exception:
                continue
            counts[idx] = n
        results["streams_ready_s"] = round(time.time() - t0, 1)
        print(f"bench-fleet: {sum(counts)} hosts streaming in {results['streams_ready_s']} s")
        pids = [r[0].pid for r in cp.replicas]
        run = load_bench_run()
        results["replica_rss_mb_streaming"] = [round(run.rss_kb(pid) / 1024, 1) for pid in pids]

        seen = {}

        def collect(limit, want):
            deadline = time.time() + limit
            while time.time() < deadline:
                try:
                    batch = q_out.get(timeout=0.2)
                except Exception:
                    batch = []
                for gid, state, t in batch:
                    seen.setdefault((gid, state), []).append(t)
                if want():
                    return True
            return False

        if full:
            # A request filed through a real fleet agent, approved on the control plane.
            first = FleetAgent(tmp, "agent1", cp, cp.url, PROD, labels=("db",)).start()
            agents.append(first)
            p = first.jit(req, "request", "--for", "1h", "--reason", "bench", "--json")
            if p.returncode != 0:
                raise SystemExit("bench-fleet: jit request on the fleet agent failed: " + p.stderr)
            rid = wait_for(lambda: [r for r in control(cp.server_socket, appr, "list", "--pending") if r.get("user") == req], 30)
            cpu0 = [cpu_seconds(pid) for pid in pids]
            others0 = (sum(cpu_seconds(p.pid) for p in procs), pg_cpu_seconds(pg))
            t_approve = time.time()
            gid = control(cp.server_socket, appr, "approve", str(rid[0]["id"]))["grant_id"]
        else:
            first = None
            results["approval"] = "grant row written in SQL (the server's approval path is not in this build)"
            cpu0 = [cpu_seconds(pid) for pid in pids]
            others0 = (sum(cpu_seconds(p.pid) for p in procs), pg_cpu_seconds(pg))
            gid, t_approve = sql_grant(cp, req)
        collect(60, lambda: len(seen.get((gid, "active"), [])) >= N_HOSTS)
        results["approve_to_all"] = pcts([t - t_approve for t in seen.get((gid, "active"), [])])
        t_revoke = time.time()
        if full:
            control(cp.server_socket, appr, "revoke", str(gid))
        else:
            t_revoke = float(cp.pg.sql(f"UPDATE grants SET state = 'revoked', ended_at = now(), ended_by = 'bench' WHERE id = {gid} "
                                       "RETURNING extract(epoch FROM clock_timestamp())", db=cp.database)[0][0])
        collect(60, lambda: len(seen.get((gid, "revoked"), [])) >= N_HOSTS)
        results["revoke_to_all"] = pcts([t - t_revoke for t in seen.get((gid, "revoked"), [])])
        results["replica_cpu_s_fanout"] = [round(cpu_seconds(pid) - c, 2) for pid, c in zip(pids, cpu0)]
        # The same two cores also ran the simulated hosts and PostgreSQL: what they took is time the replicas
        # could not have.
        results["hosts_cpu_s_fanout"] = round(sum(cpu_seconds(p.pid) for p in procs) - others0[0], 2)
        results["postgres_cpu_s_fanout"] = round(pg_cpu_seconds(pg) - others0[1], 2)
        results["replica_rss_mb_after"] = [round(run.rss_kb(pid) / 1024, 1) for pid in pids]

        results["requests_per_s"] = file_rate(cp, names[:200], os.path.join(tmp, "certs"), ca, req)
        results["check"] = check_latency(run, tmp, cp, users, first, req, appr) if first else None
        return report(results)
    finally:
        ev_stop.set()
        for p in procs:
            if isinstance(p, subprocess.Popen):
                try:
                    p.stdin.close()
                    p.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    p.kill()
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        for a in agents:
            a.stop()
        if cp:
            cp.stop()
        pg.stop()
        users.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def sql_grant(cp, user):
    rows = cp.pg.sql(f"""
        WITH r AS (INSERT INTO requests (user_name, uid, environment, scope, runas, duration, reason, state, created_at, expires_at)
                   VALUES ('{user}', 1000, '{PROD}', 'login', 'root', 3600, 'bench', 'approved', now(), now() + interval '1 hour')
                   RETURNING id)
        INSERT INTO grants (request_id, user_name, uid, environment, hosts, labels, scope, commands, runas, state, starts_at, expires_at, nopasswd)
        SELECT r.id, '{user}', 1000, '{PROD}', '{{}}', '{{}}', 'login', '', 'root', 'active', now(), now() + interval '1 hour', true
        FROM r RETURNING id, extract(epoch FROM clock_timestamp())""", db=cp.database)
    # The clock is the machine's: the time taken just before the commit is the start of the fan-out.
    return int(rows[0][0]), float(rows[0][1])


def file_rate(cp, names, certdir, ca, user):
    """Requests filed per second through POST /v1/requests, from `names` hosts at once for FILE_SECONDS."""
    statuses, refusals = {}, {}

    async def one(name, i):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(os.path.join(certdir, name + ".pem"))
        reader, writer = await asyncio.open_connection("127.0.0.1", cp.ports[i % 2], ssl=ctx, server_hostname="127.0.0.1")
        seq, end = 0, time.time() + FILE_SECONDS
        while time.time() < end:
            seq += 1
            body = json.dumps({"seq": seq, "user": user, "scope": "login", "commands": [], "duration": 600, "reason": "bench",
                               "hosts": [], "rhost": "", "service": "sshd",
                               "filed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
            writer.write(b"POST /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, answer = await read_response(reader)
            statuses[status] = statuses.get(status, 0) + 1
            if status not in (200, 201) and str(status) not in refusals:
                refusals[str(status)] = answer.decode(errors="replace")[:300]
        writer.close()

    async def all_of():
        await asyncio.gather(*(one(n, i) for i, n in enumerate(names)), return_exceptions=True)
    t0 = time.time()
    asyncio.run(all_of())
    took = time.time() - t0
    ok = sum(v for k, v in statuses.items() if k in (200, 201))
    return {"filed_per_s": round(ok / took, 1), "concurrent_hosts": len(names), "statuses": {str(k): v for k, v in statuses.items()},
            "refusals": refusals}


def check_latency(run, tmp, cp, users, fleet_agent, req, appr):
    """The agent's check round trip (bench/run.py's `rt` on a check frame) on a fleet host holding a grant from
    the stream, beside a single-host agent holding the same kind of grant."""
    from conftest import Agent
    n = 5000
    os.makedirs(os.path.join(tmp, "single"))
    single = Agent(os.path.join(tmp, "single"))
    try:
        single.start()
        rid = single.jit_json(req, "request", "--for", "1h", "--reason", "bench")["id"]
        single.jit_json(appr, "approve", str(rid))
        frame = run.check_frame(os.path.join(tmp, "check.frame"), req, service="sshd")
        tools = os.path.join(REPO, "bench", "build", "rt")
        fleet_agent.jit(req, "request", "--for", "1h", "--reason", "bench check", "--json")
        pending = wait_for(lambda: [r for r in control(cp.server_socket, appr, "list", "--pending") if r.get("user") == req], 30)
        control(cp.server_socket, appr, "approve", str(pending[0]["id"]))
        wait_for(lambda: [g for g in fleet_agent.jit_json(None, "grants", "--active") if g.get("user") == req], 30)
        out = {}
        for name, sock in (("single_host", single.socket), ("fleet_host", fleet_agent.socket)):
            p = subprocess.run([tools, sock, frame, "latency", str(n)], capture_output=True, text=True, timeout=300)
            out[name] = run.summary(run.lines_ns(p.stdout))
        out["fleet_over_single_p50"] = round(out["fleet_host"]["p50_us"] / out["single_host"]["p50_us"], 3)
        out["fleet_agent_rss_mb"] = round(run.rss_kb(fleet_agent.agent.proc.pid) / 1024, 1)
        out["single_agent_rss_mb"] = round(run.rss_kb(single.proc.pid) / 1024, 1)
        return out
    finally:
        single.stop()


def report(r):
    print(f"\nfleet benchmark: {r['hosts']} simulated hosts of one environment streaming from {r['replicas']} replicas")
    for k, label in (("approve_to_all", "approval -> grant delivered to all"), ("revoke_to_all", "revoke -> delivered to all")):
        v = r[k]
        print(f"  {label:38} n={v['n']:>6}  p50 {v.get('p50_ms', '-')} ms  p99 {v.get('p99_ms', '-')} ms  max {v.get('max_ms', '-')} ms")
    f = r["requests_per_s"]
    print(f"  requests filed through the API          {f['filed_per_s']}/s ({f['concurrent_hosts']} hosts at once; statuses {f['statuses']})")
    for code, text in f.get("refusals", {}).items():
        print(f"    first {code}: {text}")
    print(f"  replicas' RSS while {r['hosts']} hosts stream   {r['replica_rss_mb_streaming']} MB; after the fan-out {r['replica_rss_mb_after']} MB")
    print(f"  replicas' CPU for approve+revoke fan-out {r['replica_cpu_s_fanout']} s (same cores: simulated hosts "
          f"{r.get('hosts_cpu_s_fanout', '-')} s, PostgreSQL {r.get('postgres_cpu_s_fanout', '-')} s)")
    c = r["check"]
    if r.get("approval"):
        print(f"  (approval: {r['approval']})")
    if not c:
        print("  check round trip: not measured (needs the host agent's fleet mode in this build)")
    else:
        print(f"  check round trip, single-host agent      p50 {c['single_host']['p50_us']} us  p99 {c['single_host']['p99_us']} us")
        print(f"  check round trip, fleet-host agent       p50 {c['fleet_host']['p50_us']} us  p99 {c['fleet_host']['p99_us']} us"
              f"  (x{c['fleet_over_single_p50']}); agent RSS {c['fleet_agent_rss_mb']} MB vs {c['single_agent_rss_mb']} MB")
    print(f"  (identities made in {r['identities_s']} s; all streams up in {r['streams_ready_s']} s; simulated hosts: {r['simulated_hosts']})")
    with open(os.path.join(REPO, "bench", "fleet-results.json"), "w") as out:
        json.dump(r, out, indent=2)
    print("\nwritten to bench/fleet-results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
