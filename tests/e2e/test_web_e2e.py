"""The web approval page in a real headless Chromium (Debian's chromium + chromium-driver, through selenium),
against a live `jitd server` on a throw-away PostgreSQL.

Sign-in: the server's admin command `jitd server web link USER` (the same one-time link `jit web` asks for
with a `jit login` token): the link asks before it signs in, works once, and sets a locked-down cookie.
Screenshots go to $JIT_WEB_SHOTS (default: the test's temp folder) for a person to look at.

Deciding: an approver logged in with `jit login` (an SSH key in a real ssh-agent) runs `jit web`, opens the
link, and approves a request with a TOTP code, against the server's own engine (PostgreSQL).
"""
import json
import os
import shutil
import time

import pytest

from conftest import needs_root, run
from fleet import ControlPlane, pg  # noqa: F401 (pg is a fixture)

requests = pytest.importorskip("requests")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = needs_root


@pytest.fixture
def fleet(pg, tmpdir_root):
    cp = ControlPlane(pg, tmpdir_root)
    cp.start()
    yield cp
    cp.stop()


@pytest.fixture
def browser(tmpdir_root):
    driver_path = shutil.which("chromedriver")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if not driver_path or not chrome:
        if os.geteuid() == 0:  # CI (root) always runs the browser tests: deps.sh installs chromium there
            pytest.fail("chromium and chromium-driver are not installed: run scripts/deps.sh")
        pytest.skip("chromium and chromium-driver are not installed (scripts/deps.sh installs them)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
              f"--user-data-dir={os.path.join(tmpdir_root, 'chrome-profile')}", "--no-first-run", "--disable-extensions"]:
        opts.add_argument(a)
    # The fleet CA is a throw-away one; the test checks the page, not the certificate chain.
    opts.accept_insecure_certs = True
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def shots(tmpdir_root):
    d = os.environ.get("JIT_WEB_SHOTS") or os.path.join(tmpdir_root, "shots")
    os.makedirs(d, exist_ok=True)
    return d


def link(fleet, user):
    p = fleet.admin("web", "link", user)
    assert p.returncode == 0, p.stderr
    url = p.stdout.strip()
    assert url.startswith(fleet.url + "/web/login?code="), url
    assert "works once" in p.stderr or "once" in p.stderr
    return url


def submit(browser, button_id):
    click(browser, browser.find_element(By.ID, button_id))


def click(browser, element):
    """Clicks and waits for the page that answers (a click does not wait for a form's POST or a link)."""
    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def replaced(_):
        # The old page is gone: chromedriver says so as a stale element, or, while the new document is being
        # swapped in, as "Node with given id does not belong to the document".
        try:
            old.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
    WebDriverWait(browser, 15).until(replaced)


def sign_in(browser, url):
    browser.get(url)
    submit(browser, "signin")


def test_a_one_time_link_signs_in_once_with_a_locked_down_cookie(fleet, browser, users, tmpdir_root):
    alice = users.user("web")
    url = link(fleet, alice)
    browser.get(url)
    browser.save_screenshot(os.path.join(shots(tmpdir_root), "signin.png"))
    assert alice in browser.find_element(By.ID, "signin").text
    submit(browser, "signin")
    assert browser.current_url.endswith("/web/")
    assert f"signed in as {alice}" in browser.find_element(By.TAG_NAME, "header").text
    browser.save_screenshot(os.path.join(shots(tmpdir_root), "pending.png"))
    cookie = browser.get_cookie("__Host-jit_session")
    assert cookie and cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert 8 * 3600 - 120 < cookie["expiry"] - time.time() <= 8 * 3600 + 5
    # The database keeps only a hash of it.
    rows = fleet.pg.sql("SELECT session_hash, user_name FROM web_sessions", db=fleet.database)
    assert len(rows) == 1 and rows[0][1] == alice and rows[0][0] != cookie["value"]
    # The same link again, in a fresh browser state: refused.
    browser.delete_all_cookies()
    browser.get(url)
    assert "Link not valid" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_elements(By.ID, "signin") == []
    browser.get(fleet.url + "/web/")
    assert "Not signed in" in browser.find_element(By.TAG_NAME, "h1").text
    # The admin command refuses a user the server does not know.
    p = fleet.admin("web", "link", "nosuchuser" + users.tag)
    assert p.returncode != 0 and "not known to this server" in p.stderr


def test_every_page_carries_a_strict_policy_and_a_form_without_its_csrf_token_does_nothing(fleet, browser, users):
    alice = users.user("webc")
    sign_in(browser, link(fleet, alice))
    session = browser.get_cookie("__Host-jit_session")["value"]
    r = requests.get(fleet.url + "/web/", cookies={"__Host-jit_session": session}, verify=fleet.ca, timeout=10)
    csp = r.headers["content-security-policy"]
    for part in ["default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'"]:
        assert part in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    # Sign out without the form's token (as another site's form would): refused, still signed in.
    r = requests.post(fleet.url + "/web/logout", cookies={"__Host-jit_session": session}, data={"comment": "hi"}, verify=fleet.ca, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.text
    browser.get(fleet.url + "/web/")
    assert f"signed in as {alice}" in browser.find_element(By.TAG_NAME, "header").text
    # With it (the page's own button): signed out, and the session is over server-side too.
    click(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/web/logout'] button"))
    assert "Signed out" in browser.find_element(By.TAG_NAME, "h1").text
    r = requests.get(fleet.url + "/web/", cookies={"__Host-jit_session": session}, verify=fleet.ca, timeout=10)
    assert r.status_code == 401


MFA_RULE = """  - name: web-mfa
    requesters: {groups: [jit-requesters]}
    scopes: [login, sudo]
    max_duration: 2h
    approvals: {groups: [jit-approvers], mfa: true}
  - name: web-plain
    requesters: {groups: [jit-requesters]}
    scopes: [commands]
    commands: ["/usr/bin/true"]
    max_duration: 2h
    approvals: {groups: [jit-approvers]}
"""


@pytest.fixture
def plane(pg, tmpdir_root):
    from test_login_e2e import PeoplePlane
    cp = PeoplePlane(pg, tmpdir_root, rules=MFA_RULE)
    cp.start()
    yield cp
    cp.stop()


def test_an_approver_opens_jit_web_and_approves_with_a_totp_code(plane, browser, people, tmpdir_root):
    from test_login_e2e import Person
    from test_policy_e2e import totp
    bob, alice = Person(people["bob"], plane), Person(people["alice"], plane)
    try:
        for p in (bob, alice):
            p.register()
            r = p.login()
            assert r.returncode == 0, r.stderr
        reason = "<script>document.title='pwned'</script> deploy 4411"
        r = alice.jit("request", "--env", "staging", "--sudo", "--for", "30m", "--reason", reason, "--json")
        assert r.returncode == 0, r.stderr
        rid = json.loads(r.stdout)["id"]
        r = bob.jit("mfa", "enroll")
        assert r.returncode == 0, r.stderr
        secret = r.stdout.split("secret: ")[1].split()[0]
        # jit web without a display prints the one-time link.
        r = bob.jit("web")
        assert r.returncode == 0, r.stderr
        url = r.stdout.strip()
        assert url.startswith(plane.url + "/web/login?code="), url
        sign_in(browser, url)
        assert f"signed in as {bob.name}" in browser.find_element(By.TAG_NAME, "header").text
        row = browser.find_element(By.CSS_SELECTOR, f"a[href='/web/requests/{rid}']")
        # The reason is shown as text: no script ran (the CSP forbids it too).
        assert reason in browser.find_element(By.TAG_NAME, "table").text
        assert browser.title != "pwned" and browser.find_elements(By.TAG_NAME, "script") == []
        click(browser, row)
        shot = shots(tmpdir_root)
        browser.save_screenshot(os.path.join(shot, "request.png"))
        assert reason in browser.find_element(By.CSS_SELECTOR, ".why .reason").text
        assert alice.name in browser.find_element(By.TAG_NAME, "dl").text and "web-mfa" in browser.find_element(By.TAG_NAME, "dl").text
        # The rule asks for a code: the field is there. Approving without one: the CLI's own sentence, nothing decided.
        assert browser.find_elements(By.ID, "otp") != []
        submit(browser, "approve")
        cli = bob.jit("approve", str(rid))
        assert cli.returncode == 5 and "requires approvers to confirm with a one-time code" in cli.stderr, cli.stderr
        sentence = cli.stderr.strip().removeprefix("jit: ")
        assert sentence in browser.find_element(By.CSS_SELECTOR, ".notice.bad").text
        browser.save_screenshot(os.path.join(shot, "request-no-code.png"))
        assert json.loads(alice.jit("show", str(rid), "--json").stdout)["state"] == "pending"
        # A wrong code: the engine's refusal on the page, the request still pending.
        code = totp(secret)
        browser.find_element(By.ID, "otp").send_keys("000000" if code != "000000" else "111111")
        submit(browser, "approve")
        assert "wrong" in browser.find_element(By.CSS_SELECTOR, ".notice.bad").text
        browser.save_screenshot(os.path.join(shot, "request-refused.png"))
        if time.time() % 30 > 27:
            time.sleep(31 - time.time() % 30)
        browser.find_element(By.ID, "comment").send_keys("ok from the web")
        browser.find_element(By.ID, "otp").send_keys(totp(secret))
        submit(browser, "approve")
        notices = browser.find_elements(By.CSS_SELECTOR, ".notice")
        assert notices and "is recorded" in notices[0].text, browser.find_element(By.TAG_NAME, "main").text
        assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "approved"
        assert browser.find_elements(By.ID, "approve") == []
        browser.save_screenshot(os.path.join(shot, "approved.png"))
        shown = json.loads(alice.jit("show", str(rid), "--json").stdout)
        assert shown["state"] == "approved" and shown["decided_by"] == bob.name
        # A rule without mfa: its page has no code field, and Approve needs none.
        r = alice.jit("request", "--env", "staging", "--command", "/usr/bin/true", "--for", "30m", "--reason", "plain 12", "--json")
        assert r.returncode == 0, r.stderr
        plain = json.loads(r.stdout)
        assert plain["rule"] == "web-plain" and plain["state"] == "pending", plain
        browser.get(plane.url + f"/web/requests/{plain['id']}")
        assert "web-plain" in browser.find_element(By.TAG_NAME, "dl").text
        assert browser.find_elements(By.ID, "otp") == [] and "One-time code" not in browser.page_source
        browser.save_screenshot(os.path.join(shot, "request-plain.png"))
        submit(browser, "approve")
        assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "approved"
        # The requester's own page shows the request and its grant.
        r = alice.jit("web")
        assert r.returncode == 0, r.stderr
        browser.delete_all_cookies()
        sign_in(browser, r.stdout.strip())
        browser.get(plane.url + "/web/mine")
        assert f"/web/requests/{rid}" in browser.page_source and "active" in browser.page_source
        browser.save_screenshot(os.path.join(shot, "mine.png"))
        # Her web session ends with the login it came from.
        assert alice.jit("logout").returncode == 0
        browser.get(plane.url + "/web/mine")
        assert "Not signed in" in browser.find_element(By.TAG_NAME, "h1").text
        assert "jit logout" in browser.find_element(By.TAG_NAME, "main").text
        # An API token acts with less than its person may: it never opens a web session.
        r = plane.admin("token", "create-api", "--name", "webbot", "--may", "request", "--env", "production", "--ttl", "1h", "--as", alice.name)
        assert r.returncode == 0, r.stderr
        r = requests.post(plane.url + "/v1/web/link", headers={"Authorization": "Bearer " + r.stdout.strip()}, verify=plane.ca, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "login_required", r.text
    finally:
        bob.stop()
        alice.stop()


def test_a_cross_site_page_cannot_sign_a_browser_in_nor_use_a_link(fleet, browser, users, tmpdir_root):
    """Login CSRF: an attacker's page on another site posts the attacker's own one-time link to /web/login, to
    sign the victim's browser into the attacker's account. The sign-in form needs the pre-session cookie that
    only the sign-in page sets (SameSite=Strict: a cross-site POST never carries it) and that page's token."""
    import http.server
    import threading
    evil = users.user("evil")
    url = link(fleet, evil)
    started = time.time()
    code = url.split("code=", 1)[1]
    # The victim's browser has even opened that link's page once (its pre-session cookie is in the jar).
    browser.get(url)
    assert browser.get_cookie("__Host-jit_signin")
    page = f"""<!doctype html><form method="post" action="{fleet.url}/web/login">
<input type="hidden" name="code" value="{code}"></form><script>document.forms[0].submit()</script>"""

    class Evil(http.server.BaseHTTPRequestHandler):
        timeout = 5  # Chrome opens spare connections that never send a request

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page.encode())

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        old = browser.find_element(By.TAG_NAME, "html")
        # localhost is another site than 127.0.0.1.
        browser.get(f"http://localhost:{srv.server_address[1]}/")
        WebDriverWait(browser, 15).until(EC.staleness_of(old))
        WebDriverWait(browser, 15).until(lambda d: d.current_url.startswith(fleet.url) and d.find_elements(By.TAG_NAME, "h1"))
        browser.save_screenshot(os.path.join(shots(tmpdir_root), "signin-cross-site.png"))
        assert "Sign-in refused" in browser.find_element(By.TAG_NAME, "h1").text
        assert "nobody was signed in" in browser.find_element(By.TAG_NAME, "main").text
        assert browser.get_cookie("__Host-jit_session") is None
        assert fleet.pg.sql("SELECT count(*) FROM web_sessions", db=fleet.database)[0][0] == "0"
    finally:
        srv.shutdown()
    # A plain POST from a script (no browser, no cookie): refused with the sentence, status 403.
    r = requests.post(fleet.url + "/web/login", data={"code": code}, verify=fleet.ca, timeout=10)
    assert r.status_code == 403 and "nobody was signed in" in r.text
    # None of it used the link up: in its own page, the button still signs in (as the attacker, which the page says).
    browser.get(url)
    assert browser.find_elements(By.ID, "signin"), (time.time() - started, browser.find_element(By.TAG_NAME, "main").text)
    assert evil in browser.find_element(By.ID, "signin").text
    submit(browser, "signin")
    assert f"signed in as {evil}" in browser.find_element(By.TAG_NAME, "header").text
    assert browser.get_cookie("__Host-jit_signin") is None
