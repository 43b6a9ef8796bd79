"""Drives larder's dashboard in headless Chromium (Debian's chromium and
chromium-driver) with Selenium, for tests/dashboard.rs.

Usage: drive.py CONFIG.json. The config names the server's URL, the admin token,
a token with rights on one cache only, that cache, and the directory to save
screenshots in. What the page showed is printed as one JSON object on stdout;
tests/dashboard.rs makes the assertions. A step that does not happen within its
timeout (the page never shows what it should) exits non-zero with the reason.
"""

import json
import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import (
    NoSuchElementException, StaleElementReferenceException, TimeoutException)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

TIMEOUT = 30


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("LARDER_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--no-first-run", "--window-size=1280,1000",
                "--user-data-dir=" + profile):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=os.environ.get(
        "LARDER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.execute_cdp_cmd("Network.enable", {})
    return d


def wait(d, what, pred):
    try:
        return WebDriverWait(d, TIMEOUT, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException)).until(lambda _: pred())
    except TimeoutException:
        state = d.execute_script("return document.body.dataset.state")
        errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".error") if e.text]
        sys.exit(f"timed out waiting for {what} (page state {state!r}, errors {errors})")


def state_is(d, state):
    return d.execute_script("return document.body.dataset.state") == state


def sign_in(d, token):
    field = d.find_element(By.ID, "token-input")
    field.clear()
    field.send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()
    wait(d, "the dashboard to load", lambda: state_is(d, "ready"))


def sign_out(d):
    d.find_element(By.ID, "signout").click()
    wait(d, "signing out", lambda: state_is(d, "signed-out"))


def cards(d):
    out = []
    for card in d.find_elements(By.CSS_SELECTOR, "#cache-list article.cache"):
        fields = {}
        for dd in card.find_elements(By.CSS_SELECTOR, "dd[data-field]"):
            fields[dd.get_attribute("data-field")] = {
                "text": dd.text,
                "value": dd.get_attribute("data-value"),
                "hits": dd.get_attribute("data-hits"),
                "misses": dd.get_attribute("data-misses"),
            }
        out.append({
            "name": card.get_attribute("data-cache"),
            "badge": card.find_element(By.CSS_SELECTOR, ".badge").text,
            "fields": fields,
            "recent": [td.text for td in card.find_elements(By.CSS_SELECTOR, "table.recent td.path")],
            "nix_conf": card.find_element(By.CSS_SELECTOR, "pre.conf").get_attribute("textContent"),
        })
    return out


def store_figures(d):
    if not d.find_element(By.ID, "store").is_displayed():
        return None
    return {dd.get_attribute("data-field"): dd.text
            for dd in d.find_elements(By.CSS_SELECTOR, "#store-figures dd")}


def token_rows(d):
    # Read in one script: the rows are replaced whenever the list reloads.
    return d.execute_script("""
        return Array.from(document.querySelectorAll('#token-rows tr')).map(r => ({
            jti: r.dataset.jti, state: r.querySelector('td.state').textContent}));
    """)


def row_state(d, jti):
    for r in token_rows(d):
        if r["jti"] == jti:
            return r["state"]
    return None


def fill_mint_form(d, sub, pattern, perms, validity_secs):
    f = d.find_element(By.ID, "mint-sub")
    f.clear()
    f.send_keys(sub)
    p = d.find_element(By.ID, "mint-pattern")
    p.clear()
    p.send_keys(pattern)
    for box in d.find_elements(By.CSS_SELECTOR, "#mint-perms input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in perms):
            box.click()
    Select(d.find_element(By.ID, "mint-validity")).select_by_value(str(validity_secs))
    d.find_element(By.CSS_SELECTOR, "#mint-form button[type=submit]").click()


def mint_refused(d, sub, pattern, perms, validity_secs):
    """Mint through the form, expecting a refusal; returns the message shown."""
    d.execute_script("document.getElementById('mint-error').hidden = true")
    fill_mint_form(d, sub, pattern, perms, validity_secs)
    wait(d, "the refusal", lambda: d.find_element(By.ID, "mint-error").is_displayed())
    return d.find_element(By.ID, "mint-error").text


def mint_and_revoke(d, sub, pattern, perms, validity_secs):
    """Mint through the form, then revoke the new token from its row."""
    fill_mint_form(d, sub, pattern, perms, validity_secs)
    wait(d, "the minted token", lambda: d.find_element(By.ID, "minted").is_displayed()
         and d.find_element(By.ID, "minted-sub").text == sub)
    token = d.find_element(By.ID, "minted-token").get_attribute("value")
    jti = d.find_element(By.ID, "minted-jti").text
    wait(d, "the minted token's row", lambda: row_state(d, jti) == "live")
    d.find_element(By.CSS_SELECTOR, f'#token-rows tr[data-jti="{jti}"] button.revoke').click()
    wait(d, "the row to say revoked", lambda: row_state(d, jti) == "revoked")
    return {"token": token, "jti": jti}


def responses(d):
    """Every response the browser received since the last call, with its body."""
    out = []
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.responseReceived":
            continue
        p = msg["params"]
        item = {"url": p["response"]["url"], "status": p["response"]["status"]}
        try:
            body = d.execute_cdp_cmd("Network.getResponseBody", {"requestId": p["requestId"]})
            item["body"] = body.get("body", "")
        except Exception as e:  # a body the browser kept no copy of
            item["body"] = None
            item["body_error"] = str(e)
        out.append(item)
    return out


def screenshot(d, path, width):
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(width, max(600, min(int(height) + 120, 6000)))
    d.save_screenshot(path)
    return path


def main():
    cfg = json.load(open(sys.argv[1]))
    out_dir = cfg["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    result = {}
    with tempfile.TemporaryDirectory() as profile:
        d = browser(profile)
        try:
            d.get(cfg["url"] + "/")
            wait(d, "the sign-in form", lambda: state_is(d, "signed-out"))
            result["signed_out_source"] = d.page_source

            # The admin token sees every cache, the store and the token list.
            sign_in(d, cfg["admin_token"])
            result["admin"] = {
                "cards": cards(d),
                "store": store_figures(d),
                "tokens_listed": token_rows(d),
                "session_storage_keys": d.execute_script(
                    "return Object.keys(sessionStorage)"),
                "cookies": d.get_cookies(),
                "location": d.current_url,
            }
            result["admin_png"] = screenshot(d, os.path.join(out_dir, "admin.png"), 1280)
            result["minted"] = mint_and_revoke(
                d, cfg["mint_sub"], cfg["own_cache"], ["pull"], 2592000)
            result["admin_tokens_after"] = token_rows(d)
            # Readable on a phone: one column, nothing wider than the screen.
            d.set_window_size(390, 844)
            result["phone_overflow_px"] = d.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            d.execute_script("window.scrollTo(0, 0)")
            result["phone_png"] = os.path.join(out_dir, "phone.png")
            d.save_screenshot(result["phone_png"])  # one phone screen, from the top
            d.set_window_size(1280, 1000)

            sign_out(d)
            result["after_sign_out_source"] = d.page_source
            result["after_sign_out_storage"] = d.execute_script(
                "return Object.keys(sessionStorage)")
            result["console"] = [e["message"] for e in d.get_log("browser")]
            responses(d)  # drop the admin session's traffic

            # A token with rights on one cache: sees it and nothing else, even
            # after everything it can click.
            sign_in(d, cfg["narrow_token"])
            narrow = {
                "cards": cards(d),
                "store": store_figures(d),
                "tokens_listed": token_rows(d),
            }
            # Delegation limits, as the page shows them: no wider pattern, no
            # longer life than the signed-in token's.
            narrow["refused_wider"] = mint_refused(
                d, cfg["delegate_sub"], "*", ["pull"], 3600)
            narrow["refused_longer"] = mint_refused(
                d, cfg["delegate_sub"], cfg["own_cache"], ["pull"], 31536000)
            narrow["delegated"] = mint_and_revoke(
                d, cfg["delegate_sub"], cfg["own_cache"], ["pull"], 3600)
            d.find_element(By.ID, "refresh").click()
            wait(d, "the refresh", lambda: state_is(d, "ready"))
            narrow["page_source"] = d.page_source
            narrow["responses"] = responses(d)
            result["narrow_png"] = screenshot(d, os.path.join(out_dir, "narrow.png"), 1280)
            result["narrow"] = narrow
            result["console"] += [e["message"] for e in d.get_log("browser")]
        finally:
            d.quit()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
