"""The fleet's first slice end to end: a real PostgreSQL, `jitd server` replicas, hosts enrolling with join tokens.

Each test starts its own cluster folder, server folders and host folders, and stops everything by PID.
"""
import json
import os
import shutil
import subprocess
import threading

import pytest

from conftest import JITD, needs_root, run
from fleet import ControlPlane, FleetHost, pg  # noqa: F401 (pg is a fixture)

requests = pytest.importorskip("requests")
x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

pytestmark = needs_root


@pytest.fixture
def tmp(tmpdir_root):
    return tmpdir_root


@pytest.fixture
def fleet(pg, tmp):
    cp = ControlPlane(pg, tmp)
    yield cp
    cp.stop()


def san_uris(pem_text):
    cert = x509.load_pem_x509_certificate(pem_text.encode())
    return cert, cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


def test_two_replicas_migrate_one_database_and_enrol_two_hosts(fleet, tmp):
    # Both replicas start at the same moment against the same empty database.
    fleet.start(count=2)
    # Each migration is applied once however many replicas start (versions are taken by part: 1, 2, 3, 4, ...).
    versions = [int(v[0]) for v in fleet.pg.sql("SELECT version FROM jit_schema_migrations ORDER BY version", db=fleet.database)]
    assert versions[0] == 1 and len(versions) == len(set(versions)), versions
    a, b = FleetHost(tmp, "web1"), FleetHost(tmp, "db1")
    p = a.enrol(fleet.replica_url(0), fleet.token("staging", labels=["web"]))
    assert p.returncode == 0, p.stderr
    assert "enrolled web1 in staging" in p.stdout
    p = b.enrol(fleet.replica_url(1), fleet.token("production", labels=["db", "eu"]))
    assert p.returncode == 0, p.stderr
    # The key never left the host, and only root may read it.
    assert os.stat(a.key).st_mode & 0o777 == 0o600
    assert os.stat(a.dir).st_mode & 0o077 == 0
    me = json.loads(b.whoami().stdout)
    assert (me["name"], me["environment"], me["labels"]) == ("db1", "production", ["db", "eu"])
    cert, uris = san_uris(open(b.cert).read())
    assert "urn:jit:environment:production" in uris and "urn:jit:host:db1" in uris
    with open(b.fleet) as f:
        text = f.read()
    assert f"server: '{fleet.replica_url(1)}'" in text and "environment: 'production'" in text
    hosts = fleet.hosts()
    assert set(hosts) == {"web1", "db1"} and hosts["web1"]["environment"] == "staging"
    events = [e[0] for e in fleet.audit()]
    assert events.count("token_created") == 2 and events.count("token_used") == 2 and events.count("host_enrolled") == 2


def test_token_works_once_even_when_two_hosts_race(fleet, tmp):
    fleet.start()
    token = fleet.token("staging")
    first, second = FleetHost(tmp, "h1"), FleetHost(tmp, "h2")
    assert first.enrol(fleet.url, token).returncode == 0
    p = second.enrol(fleet.url, token)
    assert p.returncode == 1
    assert "already used (by host h1)" in p.stderr
    assert not os.path.exists(second.fleet)
    # Two concurrent uses of one fresh token: exactly one wins, every round.
    for round_ in range(3):
        token = fleet.token("staging")
        racers = [FleetHost(tmp, f"r{round_}a"), FleetHost(tmp, f"r{round_}b")]
        procs = [subprocess.Popen(h.enrol_cmd(fleet.url, token), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in racers]
        results = [(proc.wait(timeout=60), proc.stderr.read()) for proc in procs]
        codes = sorted(rc for rc, _ in results)
        assert codes == [0, 1], results
        assert any("already used" in err for rc, err in results if rc == 1), results
    refused = [e for e in fleet.audit() if e[0] == "token_refused"]
    assert len(refused) == 4 and all('"token_used"' in e[3] for e in refused)


def test_expired_and_revoked_tokens_are_refused(fleet, tmp):
    fleet.start()
    token = fleet.token("staging", ttl="1s")
    tid = token.split(".")[1]
    # Wait (bounded) until the server itself says the token has expired; then it must be refused.
    for _ in range(100):
        rows = json.loads(fleet.admin("token", "list", "--json").stdout)["tokens"]
        if [t["state"] for t in rows if t["id"] == tid] == ["expired"]:
            break
        threading.Event().wait(0.1)
    else:
        raise AssertionError("the token never expired")
    h = FleetHost(tmp, "late")
    p = h.enrol(fleet.url, token)
    assert p.returncode == 1 and "expired at" in p.stderr, p.stderr
    revoked = fleet.token("staging")
    assert fleet.admin("token", "revoke", revoked.split(".")[1]).returncode == 0
    p = h.enrol(fleet.url, revoked)
    assert p.returncode == 1 and "was revoked" in p.stderr
    # A token with a damaged secret is unknown.
    parts = token.split(".")
    forged = ".".join([parts[0], parts[1], "A" * 43, parts[3]])
    p = h.enrol(fleet.url, forged)
    assert p.returncode == 1 and "not known" in p.stderr
    assert not os.path.exists(h.fleet)


def test_a_server_of_another_ca_is_refused_before_the_token_is_sent(pg, tmp):
    ours, theirs = ControlPlane(pg, tmp), ControlPlane(pg, tmp)
    try:
        ours.start()
        theirs.start()
        token = ours.token("production")
        h = FleetHost(tmp, "victim")
        p = h.enrol(theirs.url, token)
        assert p.returncode == 1
        assert "belongs to fleet CA sha256:" in p.stderr and "nothing was sent" in p.stderr
        assert not os.path.exists(h.fleet) and not os.path.exists(h.key)
        # The other server never saw the token.
        assert [e for e in theirs.audit() if e[0].startswith("token_")] == []
        # And the right server still takes it.
        assert h.enrol(ours.url, token).returncode == 0
    finally:
        ours.stop()
        theirs.stop()


def make_csr(cn, uris=()):
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "production")]))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    csr = b.sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def test_the_environment_is_the_tokens_never_the_hosts(fleet, tmp):
    fleet.start()
    token = fleet.token("staging", labels=["web"])
    _, csr = make_csr("sneaky", ["urn:jit:environment:production", "urn:jit:label:db", "urn:jit:host:db1"])
    r = requests.post(fleet.url + "/v1/enrol", json={"token": token, "csr": csr}, verify=fleet.ca, timeout=30)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["environment"], body["labels"]) == ("sneaky", "staging", ["web"])
    _, uris = san_uris(body["certificate"])
    assert sorted(uris) == ["urn:jit:environment:staging", "urn:jit:host:sneaky", "urn:jit:label:web"]
    # A token made for one host cannot enrol another name.
    bound = fleet.token("production", host="db9")
    _, csr = make_csr("db9")
    r = requests.post(fleet.url + "/v1/enrol", json={"token": bound, "csr": csr, "name": "db1"}, verify=fleet.ca, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "token_host", r.text
    # Nor can a new token take over the name of an enrolled host.
    r = requests.post(fleet.url + "/v1/enrol", json={"token": fleet.token("production"), "csr": make_csr("sneaky")[1]}, verify=fleet.ca, timeout=30)
    assert r.status_code == 409 and "already enrolled" in r.json()["error"]["message"]


def test_revoked_host_is_refused_at_once(fleet, tmp):
    fleet.start()
    h = FleetHost(tmp, "gone")
    assert h.enrol(fleet.url, fleet.token("production")).returncode == 0
    assert h.whoami().returncode == 0
    p = fleet.admin("host", "revoke", "gone")
    assert p.returncode == 0, p.stderr
    # The certificate is still valid and unexpired, yet every call is refused from now on.
    p = h.whoami()
    assert p.returncode == 1 and "was revoked" in p.stderr, p.stderr
    p = h.renew()
    assert p.returncode == 1 and "was revoked" in p.stderr
    assert fleet.hosts()["gone"]["revoked_at"]
    assert "host_revoked" in [e[0] for e in fleet.audit()]
    assert fleet.admin("host", "revoke", "gone").returncode == 1


def test_renewal_keeps_the_identity_and_retires_old_certificates(pg, tmp):
    cp = ControlPlane(pg, tmp, lifetime="2m")
    try:
        cp.start()
        h = FleetHost(tmp, "renewer")
        assert h.enrol(cp.url, cp.token("staging", labels=["a"])).returncode == 0
        first_cert = open(h.cert).read()
        first_key = open(h.key).read()
        saved = os.path.join(tmp, "first")
        os.makedirs(saved)
        shutil.copy(h.cert, saved + "/host.pem")
        shutil.copy(h.key, saved + "/host.key")
        before = json.loads(h.whoami().stdout)
        # Not yet due: a 2-minute certificate is not within 1m of its end.
        p = h.renew("--if-expiring-within", "1m")
        assert p.returncode == 0 and "not renewed" in p.stdout
        assert open(h.cert).read() == first_cert
        p = h.renew()
        assert p.returncode == 0, p.stderr
        after = json.loads(h.whoami().stdout)
        assert after["serial"] != before["serial"]
        assert (after["name"], after["environment"], after["labels"]) == ("renewer", "staging", ["a"])
        assert open(h.key).read() == first_key
        p = h.renew("--new-key")
        assert p.returncode == 0 and "with a new key" in p.stdout
        assert open(h.key).read() != first_key and os.stat(h.key).st_mode & 0o777 == 0o600
        assert h.whoami().returncode == 0
        # The first certificate is now two renewals old: refused, though unexpired.
        r = requests.get(cp.url + "/v1/hosts/self", cert=(saved + "/host.pem", saved + "/host.key"), verify=cp.ca, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "certificate_replaced", r.text
        assert [e[0] for e in cp.audit()].count("host_renewed") == 2
    finally:
        cp.stop()


def test_calls_without_a_host_certificate_are_refused(pg, tmp):
    ours, theirs = ControlPlane(pg, tmp), ControlPlane(pg, tmp)
    try:
        ours.start()
        theirs.start()
        for method, path in [("GET", "/v1/hosts/self"), ("POST", "/v1/renew")]:
            r = requests.request(method, ours.url + path, json={}, verify=ours.ca, timeout=30)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "client_certificate_required"
            assert "jitd enrol" in r.json()["error"]["message"]
        # A host certificate of another fleet does not pass (TLS refuses it, or the API does).
        h = FleetHost(tmp, "other")
        assert h.enrol(theirs.url, theirs.token("production")).returncode == 0
        try:
            r = requests.get(ours.url + "/v1/hosts/self", cert=(h.cert, h.key), verify=ours.ca, timeout=30)
            assert r.status_code == 401, r.text
        except requests.exceptions.SSLError:
            pass
        r = requests.get(ours.url + "/v1/nothing", verify=ours.ca, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = requests.post(ours.url + "/v1/enrol", data="{not json", headers={"content-type": "application/json"}, verify=ours.ca, timeout=30)
        assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message"}
    finally:
        ours.stop()
        theirs.stop()


def test_config_and_key_files_are_checked(pg, tmp):
    cp = ControlPlane(pg, tmp)
    bad = cp.write_config(cp.ports[0], name="bad.yaml", extra="tokens:\n  max_tll: 1d\n")
    p = run([JITD, "server", "check-config", "--config", bad])
    assert p.returncode == 1 and f"{bad}:19: tokens.max_tll: is not a known setting; did you mean 'max_ttl'?" in p.stderr, p.stderr
    assert run([JITD, "server", "check-config", "--config", cp.config]).returncode == 0
    os.chmod(cp.config, 0o666)
    p = run([JITD, "server", "check-config", "--config", cp.config])
    assert p.returncode == 1 and "may be written by others" in p.stderr
    os.chmod(cp.config, 0o600)
    os.chmod(os.path.join(cp.dir, "ca.key"), 0o644)
    proc = cp.spawn()
    assert proc.wait(timeout=30) == 1
    assert "ca.key may be read by others" in open(cp.replicas[0][2]).read()
    cp.replicas = []
    os.chmod(os.path.join(cp.dir, "ca.key"), 0o600)
    # init never overwrites a CA.
    p = cp.admin("init")
    assert p.returncode == 1 and "already" in p.stderr
