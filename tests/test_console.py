"""The web console in a real browser against a real server: sign in, register, deploy,
copy the endpoint snippet, redeploy, read the history, compare models in the playground,
un-deploy, keep a deployment alive and manage API keys."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.conftest import (
    ADMIN_KEY,
    ADMIN_PASSWORD,
    ServerProcess,
    deploy_and_wait,
    free_port,
    start_server,
    stop_server,
    wait_for_job,
)
from tests.console_browser import (
    JOB_TIMEOUT_MS,
    PHONE,
    chromium,
    confirm_dialog,
    copy_demo_model,
    new_context,
    screenshot,
    sign_in,
)
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

T5_NAME = "Console T5"
T5_SLUG = "console-t5"
GPT2_NAME = "Console GPT-2"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("console-home"), free_port())
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def context(browser: Browser, console: ServerProcess) -> Iterator[BrowserContext]:
    created = new_context(browser, console.url)
    yield created
    created.close()


@pytest.fixture(scope="module")
def script_errors() -> list[str]:
    """Uncaught script errors and Content-Security-Policy violations seen by the main page."""
    return []


@pytest.fixture(scope="module")
def page(context: BrowserContext, script_errors: list[str]) -> Page:
    created = context.new_page()
    created.on("pageerror", lambda error: script_errors.append(str(error)))
    created.on("console", lambda message: script_errors.append(message.text)
               if "Content Security Policy" in message.text else None)
    return created


@pytest.fixture(scope="module")
def api(console: ServerProcess) -> Iterator[httpx.Client]:
    with console.client() as client:
        yield client


# Sign in ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_in(page: Page, context: BrowserContext, shots: Path) -> dict[str, Any]:
    page.goto("/models")
    redirected_to = page.url
    screenshot(page, shots, "01-sign-in")
    sign_in(page, "admin", ADMIN_PASSWORD)
    cookie = next(cookie for cookie in context.cookies() if cookie["name"] == "tunedock_session")
    return {"redirected_to": redirected_to, "landed_on": page.url, "cookie": cookie}


def test_signed_out_page_redirects_to_sign_in(signed_in: dict[str, Any]) -> None:
    assert signed_in["redirected_to"].endswith("/sign-in?next=%2Fmodels")


def test_sign_in_returns_to_requested_page(signed_in: dict[str, Any], console: ServerProcess) -> None:
    assert signed_in["landed_on"] == f"{console.url}/models"


def test_session_cookie_is_http_only(signed_in: dict[str, Any]) -> None:
    assert signed_in["cookie"]["httpOnly"] is True


def test_session_cookie_is_same_site_lax(signed_in: dict[str, Any]) -> None:
    assert signed_in["cookie"]["sameSite"] == "Lax"


def test_wrong_password_is_rejected(browser: Browser, console: ServerProcess) -> None:
    context = new_context(browser, console.url)
    page = context.new_page()
    page.goto("/sign-in")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    message = page.get_by_role("alert").inner_text()
    context.close()
    assert message == "Invalid username or password."


# CSRF --------------------------------------------------------------------------------------


def session_client(console: ServerProcess, context: BrowserContext) -> httpx.Client:
    cookies = {cookie["name"]: cookie["value"] for cookie in context.cookies()}
    return httpx.Client(base_url=console.url, cookies=cookies, timeout=30)


def test_form_post_without_csrf_token_is_403(signed_in: dict[str, Any], console: ServerProcess,
                                             context: BrowserContext) -> None:
    with session_client(console, context) as client:
        response = client.post("/models", data={"name": "Forged", "path": "/tmp"})
    assert response.status_code == 403


def test_form_post_with_wrong_csrf_token_is_403(signed_in: dict[str, Any], console: ServerProcess,
                                                context: BrowserContext) -> None:
    with session_client(console, context) as client:
        response = client.post("/models", data={"name": "Forged", "path": "/tmp", "csrf_token": "0" * 64})
    assert response.status_code == 403


def test_script_post_without_csrf_header_is_403(signed_in: dict[str, Any], console: ServerProcess,
                                                context: BrowserContext) -> None:
    with session_client(console, context) as client:
        response = client.post("/playground/key", headers={"Accept": "application/json"})
    assert response.status_code == 403


def test_sign_in_post_without_csrf_token_is_403(console: ServerProcess) -> None:
    response = httpx.post(f"{console.url}/sign-in", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 403


# Register a model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(page: Page, signed_in: dict[str, Any], console: ServerProcess, shots: Path) -> dict[str, Any]:
    model_dir = copy_demo_model(demo_models_root() / "date-normalizer-t5", console.home / "models" / "console-t5")
    page.get_by_role("link", name="Register a model").click()
    page.get_by_label("Name").fill(T5_NAME)
    page.get_by_label("Path on the server").fill(str(console.home / "models" / "missing"))
    page.get_by_role("button", name="Register").click()
    path_error = page.locator("#error-path").inner_text()
    screenshot(page, shots, "02-register-error")
    page.get_by_label("Path on the server").fill(str(model_dir))
    page.get_by_role("button", name="Register").click()
    page.wait_for_url(f"**/models/{T5_SLUG}")
    screenshot(page, shots, "03-model-overview")
    overview = page.locator(".facts").first.inner_text()
    page.get_by_role("link", name="Models", exact=True).first.click()
    screenshot(page, shots, "04-models")
    row = page.locator("tr", has=page.get_by_role("link", name=T5_NAME)).inner_text()
    return {"path_error": path_error, "overview": overview, "models_row": row}


def test_register_shows_catalog_message(registered: dict[str, Any]) -> None:
    assert "does not exist" in registered["path_error"]


def test_overview_shows_parameter_count(registered: dict[str, Any]) -> None:
    assert "Parameters" in registered["overview"]


def test_overview_shows_format(registered: dict[str, Any]) -> None:
    assert "seq2seq-lm" in registered["overview"]


def test_models_table_lists_model_format(registered: dict[str, Any]) -> None:
    assert "seq2seq-lm" in registered["models_row"]


def test_models_table_shows_not_deployed(registered: dict[str, Any]) -> None:
    assert "not deployed" in registered["models_row"]


# Deploy ------------------------------------------------------------------------------------


def open_model_tab(page: Page, tab: str) -> None:
    page.goto(f"/models/{T5_SLUG}")
    page.get_by_role("navigation", name="Model sections").get_by_role("link", name=tab, exact=True).click()


@pytest.fixture(scope="module")
def first_deploy(page: Page, registered: dict[str, Any], shots: Path) -> dict[str, Any]:
    open_model_tab(page, "Deploy")
    screenshot(page, shots, "05-deploy-form")
    temperature_range = page.locator("#hint-field-generation-temperature").inner_text()
    # int8 passes the form but not the engine check (transformers on cpu runs none, float32 and bfloat16),
    # so the server marks the field.
    page.get_by_label("Quantization").select_option("int8")
    page.get_by_role("button", name="Deploy").click()
    quantization_error = page.locator("#error-field-optimization-quantization").inner_text()
    screenshot(page, shots, "06-deploy-field-error")
    page.get_by_label("Quantization").select_option("none")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/jobs/*")
    page.locator("[data-job-events] li").first.wait_for()
    screenshot(page, shots, "07-job-progress")
    job_url = page.url
    page.wait_for_url("**/history?deployment=*", timeout=JOB_TIMEOUT_MS)
    screenshot(page, shots, "08-history-v1")
    return {"temperature_range": temperature_range, "quantization_error": quantization_error,
            "job_url": job_url, "history_url": page.url}


def test_deploy_form_shows_allowed_range(first_deploy: dict[str, Any]) -> None:
    assert "Allowed: 0 to 2" in first_deploy["temperature_range"]


def test_deploy_shows_field_level_message(first_deploy: dict[str, Any]) -> None:
    assert "not supported by engine" in first_deploy["quantization_error"]


def test_deploy_opens_job_progress(first_deploy: dict[str, Any]) -> None:
    assert "/jobs/" in first_deploy["job_url"]


def test_deploy_lands_on_history(first_deploy: dict[str, Any]) -> None:
    assert f"/models/{T5_SLUG}/history" in first_deploy["history_url"]


# Endpoint ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copied_curl(page: Page, first_deploy: dict[str, Any], console: ServerProcess, shots: Path) -> dict[str, Any]:
    open_model_tab(page, "Model Endpoint")
    snippet_on_page = page.locator("#snippet-curl").inner_text()
    page.get_by_role("button", name="Copy the cURL snippet").click()
    status = page.locator("[data-copy-status]")
    status.filter(has_text="copied").wait_for()
    clipboard = page.evaluate("navigator.clipboard.readText()")
    screenshot(page, shots, "09-endpoint")
    page.get_by_role("tab", name="Python").click()
    python_visible = page.locator("#panel-python").is_visible()
    run = subprocess.run(["bash", "-c", clipboard], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TUNEDOCK_API_KEY": ADMIN_KEY})
    return {"snippet_on_page": snippet_on_page, "clipboard": clipboard, "status": status.inner_text(), "python_visible": python_visible,
            "run": run}


def test_copy_puts_snippet_on_clipboard(copied_curl: dict[str, Any]) -> None:
    assert copied_curl["clipboard"] == copied_curl["snippet_on_page"]


def test_copy_says_so(copied_curl: dict[str, Any]) -> None:
    assert copied_curl["status"] == "cURL snippet copied to the clipboard."


def test_snippet_tabs_switch(copied_curl: dict[str, Any]) -> None:
    assert copied_curl["python_visible"] is True


def test_copied_curl_runs(copied_curl: dict[str, Any]) -> None:
    assert copied_curl["run"].returncode == 0


def test_copied_curl_returns_completion(copied_curl: dict[str, Any]) -> None:
    assert json.loads(copied_curl["run"].stdout)["object"] == "text_completion"


# Redeploy with a changed temperature ------------------------------------------------------


@pytest.fixture(scope="module")
def redeployed(page: Page, copied_curl: dict[str, Any], shots: Path) -> dict[str, Any]:
    open_model_tab(page, "Deploy")
    prefilled = page.get_by_label("Temperature").input_value()
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/history?deployment=*", timeout=JOB_TIMEOUT_MS)
    rows = page.locator(".history-table tbody tr")
    names = [row.get_attribute("data-deployment") for row in rows.all()]
    ticked = [row.get_attribute("data-deployment") for row in rows.all()
              if row.locator(".live-tick").count() == 1]
    page.locator(".history-table tbody tr", has_text=f"{T5_NAME}_v2").locator("td").nth(1).click()
    page.wait_for_url("**deployment=*")
    change = page.locator('.changes-table tr[data-field="generation.temperature"]').inner_text()
    screenshot(page, shots, "10-history-v2-details")
    return {"prefilled": prefilled, "names": names, "ticked": ticked, "change": change}


def test_deploy_form_prefills_live_version(redeployed: dict[str, Any]) -> None:
    assert redeployed["prefilled"] == "1.0"


def test_history_lists_two_versions(redeployed: dict[str, Any]) -> None:
    assert redeployed["names"] == [f"{T5_NAME}_v2", f"{T5_NAME}_v1"]


def test_history_ticks_live_version(redeployed: dict[str, Any]) -> None:
    assert redeployed["ticked"] == [f"{T5_NAME}_v2"]


def test_details_show_changed_temperature(redeployed: dict[str, Any]) -> None:
    assert redeployed["change"].split() == ["generation.temperature", "1.0", "0.3"]


# Playground --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(api: httpx.Client, console: ServerProcess) -> dict[str, Any]:
    """A second live model for the playground, set up through the management API."""
    model_dir = copy_demo_model(demo_models_root() / "date-normalizer-gpt2", console.home / "models" / "console-gpt2")
    model: dict[str, Any] = api.post("/api/models", json={"name": GPT2_NAME, "path": str(model_dir)}).json()
    job = deploy_and_wait(api, model["slug"], {"generation": {"temperature": 0, "max_tokens": 16}})
    assert job["status"] == "success", job
    return {**model, "deployment_id": job["deployment_id"]}


@pytest.fixture(scope="module")
def playground(page: Page, redeployed: dict[str, Any], gpt2: dict[str, Any], shots: Path) -> dict[str, Any]:
    page.goto("/playground")
    page.get_by_label("Prompt", exact=True).fill("the 5th of March, 2021 => ")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_role("button", name="Run", exact=True).click()
    columns = page.locator("[data-result]")
    page.locator('[data-result][data-done="true"]').nth(1).wait_for(timeout=JOB_TIMEOUT_MS)
    screenshot(page, shots, "11-playground")
    results = [{"model": column.get_attribute("data-model"),
                "answer": column.locator("[data-answer]").inner_text(),
                "error": column.locator("[data-result-error]").inner_text(),
                "total": column.locator('[data-metric="total"]').inner_text(),
                "ttft": column.locator('[data-metric="ttft"]').inner_text(),
                "completion_tokens": column.locator('[data-metric="completion_tokens"]').inner_text()}
               for column in columns.all()]
    runs = page.locator("[data-runs] li").count()
    page.reload()
    runs_after_reload = page.locator("[data-runs] li").count()
    return {"results": results, "runs": runs, "runs_after_reload": runs_after_reload}


def test_playground_shows_two_columns(playground: dict[str, Any], gpt2: dict[str, Any]) -> None:
    assert sorted(result["model"] for result in playground["results"]) == sorted([gpt2["slug"], T5_SLUG])


def test_playground_columns_have_no_error(playground: dict[str, Any]) -> None:
    assert [result["error"] for result in playground["results"]] == ["", ""]


def test_playground_columns_show_answers(playground: dict[str, Any]) -> None:
    assert all(result["answer"].strip() for result in playground["results"])


def test_playground_columns_show_total_time(playground: dict[str, Any]) -> None:
    assert all(result["total"].endswith(("ms", " s")) for result in playground["results"])


def test_playground_columns_show_first_token_time(playground: dict[str, Any]) -> None:
    assert all("—" not in result["ttft"] for result in playground["results"])


def test_playground_columns_count_tokens(playground: dict[str, Any]) -> None:
    assert all(result["completion_tokens"].lstrip("≈ ").isdigit() for result in playground["results"])


def test_playground_keeps_run(playground: dict[str, Any]) -> None:
    assert playground["runs"] == 1


def test_playground_run_survives_reload(playground: dict[str, Any]) -> None:
    assert playground["runs_after_reload"] == 1


# Un-deploy ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def undeployed(page: Page, playground: dict[str, Any], shots: Path) -> dict[str, Any]:
    open_model_tab(page, "Deployment History")
    page.get_by_role("link", name=f"{T5_NAME}_v2").click()
    page.get_by_role("button", name="Un-deploy").click()
    dialog_text = page.locator("#confirm-message").inner_text()
    confirm_dialog(page)
    page.wait_for_url("**/history?deployment=*", timeout=JOB_TIMEOUT_MS)
    section = page.locator("section.undeployment")
    section.wait_for()
    screenshot(page, shots, "12-undeployed")
    ticks = page.locator(".history-table .live-tick").count()
    return {"dialog": dialog_text, "undeployed_by": section.locator(".undeployed-by").inner_text(),
            "section": section.inner_text(), "ticks": ticks}


def test_undeploy_asks_for_confirmation(undeployed: dict[str, Any]) -> None:
    assert undeployed["dialog"].startswith(f"Un-deploy {T5_NAME}_v2?")


def test_undeployment_names_user(undeployed: dict[str, Any]) -> None:
    assert undeployed["undeployed_by"] == "admin"


def test_undeployment_gives_reason(undeployed: dict[str, Any]) -> None:
    assert "manual" in undeployed["section"]


def test_history_has_no_live_tick_after_undeploy(undeployed: dict[str, Any]) -> None:
    assert undeployed["ticks"] == 0


def test_superseded_version_names_system(page: Page, undeployed: dict[str, Any], api: httpx.Client) -> None:
    versions = api.get(f"/api/models/{T5_SLUG}/deployments").json()["items"]
    first = next(item for item in versions if item["version"] == 1)
    page.goto(f"/deployments/{first['id']}")
    assert page.locator("section.undeployment .undeployed-by").inner_text() == "system"


@pytest.fixture(scope="module")
def failed_version(page: Page, api: httpx.Client, undeployed: dict[str, Any], shots: Path) -> dict[str, Any]:
    """A version that failed because its deploy was cancelled, read in the history."""
    response = api.post(f"/api/models/{T5_SLUG}/deployments", json={})
    api.post(f"/api/jobs/{response.json()['job']['id']}/cancel")
    job = wait_for_job(api, response.json()["job"]["id"])
    page.goto(f"/deployments/{job['deployment_id']}")
    row = page.locator(".history-table tbody tr", has_text=f"{T5_NAME}_v3")
    hover_text = row.locator(".status-failed").get_attribute("title")
    screenshot(page, shots, "17-history-failed-version")
    return {"hover": hover_text, "details": page.locator(".failure-reason").inner_text()}


def test_failed_status_shows_reason_on_hover(failed_version: dict[str, Any]) -> None:
    assert failed_version["hover"] == "cancelled by admin"


def test_failed_version_details_show_reason(failed_version: dict[str, Any]) -> None:
    assert failed_version["details"] == "cancelled by admin"


# Roles and the audit trail -----------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer(browser: Browser, console: ServerProcess, api: httpx.Client, redeployed: dict[str, Any],
           gpt2: dict[str, Any], shots: Path) -> dict[str, Any]:
    created = api.post("/api/users", json={"username": "viewer1", "email": "viewer1@example.com",
                                           "password": "viewer-password", "role": "viewer"})
    assert created.status_code == 201, created.text
    context = new_context(browser, console.url)
    page = context.new_page()
    page.goto(f"/models/{T5_SLUG}/deploy")
    sign_in(page, "viewer1", "viewer-password")
    notice = page.locator(".tab-content .alert").inner_text()
    screenshot(page, shots, "16-viewer-deploy-tab")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    forced = page.request.post(f"/models/{T5_SLUG}/deploy", form={"csrf_token": csrf or ""})
    page.goto(f"/deployments/{gpt2['deployment_id']}")  # the live version of the GPT-2 copy
    undeploy_buttons = page.get_by_role("button", name="Un-deploy").count()
    context.close()
    return {"notice": notice, "forced_status": forced.status, "undeploy_buttons": undeploy_buttons}


def test_viewer_sees_role_notice(viewer: dict[str, Any]) -> None:
    assert "may read deployments but not deploy" in viewer["notice"]


def test_viewer_deploy_post_is_403(viewer: dict[str, Any]) -> None:
    assert viewer["forced_status"] == 403


def test_viewer_gets_no_undeploy_button(viewer: dict[str, Any]) -> None:
    assert viewer["undeploy_buttons"] == 0


def test_console_deploy_is_audited(redeployed: dict[str, Any], api: httpx.Client) -> None:
    events = api.get("/api/audit", params={"action": "deployment.deploy"}).json()["items"]
    console_events = [event["target"] for event in events
                      if event["target"].endswith("(console)") and event["outcome"] == "success"]
    assert console_events == [f"{T5_NAME}_v2 (console)", f"{T5_NAME}_v1 (console)"]


def test_console_denied_deploy_is_audited(viewer: dict[str, Any], api: httpx.Client) -> None:
    events = api.get("/api/audit", params={"action": "deployment.deploy", "user": "viewer1"}).json()["items"]
    assert [event["outcome"] for event in events] == ["denied"]


def test_console_sign_in_is_audited(signed_in: dict[str, Any], api: httpx.Client) -> None:
    events = api.get("/api/audit", params={"action": "auth.sign_in", "user": "admin"}).json()["items"]
    assert "admin (console)" in [event["target"] for event in events]


# Keep-alive --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept_alive(browser: Browser, console: ServerProcess, gpt2: dict[str, Any], shots: Path) -> dict[str, Any]:
    context = new_context(browser, console.url)
    page = context.new_page()
    page.goto(f"/deployments/{gpt2['deployment_id']}/keep-alive")
    redirected_to = page.url
    sign_in(page, "admin", ADMIN_PASSWORD)
    returned_to = page.url
    page.get_by_role("button", name="Keep it running").click()
    message = page.get_by_role("status").first.inner_text()
    screenshot(page, shots, "13-keep-alive")
    context.close()
    return {"redirected_to": redirected_to, "returned_to": returned_to, "message": message}


def test_keep_alive_requires_sign_in(kept_alive: dict[str, Any]) -> None:
    assert "/sign-in?next=" in kept_alive["redirected_to"]


def test_keep_alive_returns_after_sign_in(kept_alive: dict[str, Any], gpt2: dict[str, Any]) -> None:
    assert kept_alive["returned_to"].endswith(f"/deployments/{gpt2['deployment_id']}/keep-alive")


def test_keep_alive_resets_idle_clock(kept_alive: dict[str, Any]) -> None:
    assert "idle clock" in kept_alive["message"]


# API keys ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_key_page(page: Page, signed_in: dict[str, Any], console: ServerProcess, shots: Path) -> dict[str, Any]:
    page.goto("/keys")
    page.get_by_label("Name").fill("ci bot")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#issued-secret").inner_text()
    page.get_by_role("button", name="Copy the API key").click()
    page.locator("[data-copy-status]").filter(has_text="copied").wait_for()
    clipboard = page.evaluate("navigator.clipboard.readText()")
    screenshot(page, shots, "14-api-key-created")
    works_before = httpx.get(f"{console.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    page.goto("/keys")
    listed = page.locator(f'tr[data-key-prefix="{secret[:12]}"]')
    listed_text = listed.inner_text()
    listed.get_by_role("button", name="Revoke").click()
    confirm_dialog(page)
    page.wait_for_url("**/keys?revoked=*")
    screenshot(page, shots, "15-api-key-revoked")
    works_after = httpx.get(f"{console.url}/v1/models", headers={"Authorization": f"Bearer {secret}"})
    return {"secret": secret, "clipboard": clipboard, "listed": listed_text, "before": works_before,
            "after": works_after, "revoked_state": page.locator(f'tr[data-key-prefix="{secret[:12]}"]').inner_text()}


def test_created_key_is_copied(api_key_page: dict[str, Any]) -> None:
    assert api_key_page["clipboard"] == api_key_page["secret"]


def test_created_key_is_listed(api_key_page: dict[str, Any]) -> None:
    assert "ci bot" in api_key_page["listed"]


def test_created_key_works(api_key_page: dict[str, Any]) -> None:
    assert api_key_page["before"].status_code == 200


def test_revoked_key_is_rejected(api_key_page: dict[str, Any]) -> None:
    assert api_key_page["after"].status_code == 401


def test_revoked_key_is_marked(api_key_page: dict[str, Any]) -> None:
    assert "revoked" in api_key_page["revoked_state"]


# Layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/models", f"/models/{T5_SLUG}/deploy", f"/models/{T5_SLUG}/history",
                                  f"/models/{T5_SLUG}/endpoint", "/playground", "/keys"])
def test_page_fits_phone_width(path: str, page: Page, undeployed: dict[str, Any], shots: Path) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.goto(path)
    screenshot(page, shots, "phone" + path.replace("/", "-"))
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert overflow == 0


def test_pages_raise_no_script_errors(undeployed: dict[str, Any], api_key_page: dict[str, Any],
                                      script_errors: list[str]) -> None:
    assert script_errors == []


def test_sign_out_ends_session(page: Page, undeployed: dict[str, Any], api_key_page: dict[str, Any],
                               context: BrowserContext, console: ServerProcess) -> None:
    token = next(cookie["value"] for cookie in context.cookies() if cookie["name"] == "tunedock_session")
    page.goto("/models")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    assert httpx.get(f"{console.url}/api/models", headers={"Authorization": f"Bearer {token}"}).status_code == 401
