"""The status page in a real browser (Debian's headless Chromium, driven by Playwright) against a
three-node cluster on loopback: real reconcilers, real HAProxy, olladist-sim instances, a git
repository over HTTP. The tests run in order on one cluster; the last one stops a node.

Screenshots go to the test's temp dir; with OLLADIST_UPDATE_GOLDEN=1 they also replace the
ones docs/operating.md shows (review them before committing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from olladist.layout import PEER_SECRET_FILE
from tests.conftest import REPO, need, olladist_cmd
from tests.e2e.browser import CHROMIUM, PHONE, chromium
from tests.e2e.cluster import DEFAULT_MODELS, Cluster, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMA = json.loads((REPO / "docs/schema/cluster-view.schema.json").read_text())
REFRESH_S = 2  # the page's ?refresh=, so that a test waits seconds, not the default 5
API_KEY = "olladist-test-api-key-0123456789abcdef"
API_KEYS_FILE = "/etc/olladist/api-keys"
DOCS_IMAGES = REPO / "docs" / "images"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need(CHROMIUM)
    c = start_cluster(tmp_path_factory.mktemp("page"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as ctx:
        yield ctx


class Page:
    """One tab on n1's status page, recording every console error and uncaught exception."""

    def __init__(self, ctx: Any, url: str) -> None:
        self.errors: list[str] = []
        self.page = ctx.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(url)
        self.wait_refreshes(1)

    def refreshes(self) -> int:
        return int(self.page.locator("body").get_attribute("data-refreshes") or 0)

    def wait_refreshes(self, n: int, timeout: float = 60.0) -> None:
        """Until the page has drawn ``n`` views (counted by the page itself); the timeout only
        keeps a broken page from hanging the test."""
        deadline = time.monotonic() + timeout
        while self.refreshes() < n:
            assert time.monotonic() < deadline, f"the page did not refresh {n} times"
            time.sleep(0.1)

    def next_refresh(self) -> None:
        """Until a view has been drawn that was asked for after this call: the refresh in
        flight now may predate it, the one after cannot."""
        self.wait_refreshes(self.refreshes() + 2)

    def node_states(self) -> dict[str, str]:
        cards = self.page.locator("#nodes article").all()
        return {c.get_attribute("data-node"): c.get_attribute("data-state") for c in cards}

    def table(self) -> dict[str, dict[str, dict[str, str]]]:
        """model -> node -> the cell's data-* flags."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for row in self.page.locator("#placement tbody tr").all():
            model = row.get_attribute("data-model") or ""
            cells = {}
            for td in row.locator("td").all():
                cells[td.get_attribute("data-node") or ""] = {
                    k: td.get_attribute(f"data-{k}") or ""
                    for k in ("placed", "present", "loaded", "serving")
                }
            out[model] = cells
        return out

    def screenshot(self, tmp: Path, name: str) -> Path:
        path = tmp / name
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("OLLADIST_UPDATE_GOLDEN") == "1":
            DOCS_IMAGES.mkdir(exist_ok=True)
            shutil.copy(path, DOCS_IMAGES / name)
        return path


def stats(cluster: Cluster, k: int = 0) -> str:
    return f"http://{cluster.nodes[k].addr}:8404"


@pytest.fixture(scope="module")
def page(cluster: Cluster, browser: Any) -> Page:
    return Page(browser, f"{stats(cluster)}/olladist/?refresh={REFRESH_S}")


def placement(cluster: Cluster) -> dict[str, set[str]]:
    out = subprocess.run(
        [*olladist_cmd(), "placement", "--json", str(cluster.repo)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m["model"]: set(m["nodes"]) for m in json.loads(out)["models"]}


def test_page_loads_with_no_console_errors_and_shows_three_nodes(page: Page) -> None:
    assert page.node_states() == {"n1": "ok", "n2": "ok", "n3": "ok"}
    assert (
        page.page.locator("#nodes article[data-node=n1] h3")
        .inner_text()
        .startswith("n1 (this node)")
    )
    assert page.page.locator("#instances tbody tr").count() == 6  # 3 nodes x 2 instances
    assert page.errors == []


def test_placement_table_matches_olladist_placement(cluster: Cluster, page: Page) -> None:
    want = placement(cluster)
    table = page.table()
    assert set(table) == set(want)
    for model, holders in want.items():
        placed = {n for n, c in table[model].items() if c["placed"] == "true"}
        serving = {n for n, c in table[model].items() if c["serving"] == "true"}
        assert placed == holders, model
        assert serving == holders, model  # converged: every holder has it and serves it


def test_cluster_and_status_json_match_the_schema(cluster: Cluster) -> None:
    with httpx.Client(timeout=10, trust_env=False) as client:
        view = client.get(f"{stats(cluster)}/olladist/v1/cluster").json()
        jsonschema.validate(view, SCHEMA)
        builds = []
        for _ in range(5):
            time.sleep(1.1)  # past the view's cache, so each is built anew
            builds.append(client.get(f"{stats(cluster)}/olladist/v1/cluster").json()["build_s"])
        print(f"cluster view build, 3 nodes, seconds: {sorted(builds)}")
        assert view["summary"] == {
            "nodes": 3,
            "reachable": 3,
            "unreachable": 0,
            "drift_items": 0,
            "errors": 0,
            "transfers": 0,
        }
        status = client.get(f"{stats(cluster, 1)}/olladist/v1/status").json()
        assert status["node"] == "n2" and status["applied_commit"] == cluster.head()


def test_peer_port_serves_status_only_to_peers_and_public_port_hides_it(cluster: Cluster) -> None:
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    secret = n1.layout.real(PEER_SECRET_FILE).read_text().split()[1]
    peer = f"http://{n2.addr}:11400"
    transport = httpx.HTTPTransport(local_address=n1.addr)
    with httpx.Client(timeout=10, trust_env=False, transport=transport) as client:
        ok = client.get(f"{peer}/olladist/v1/status", headers={"X-Olladist-Peer": secret})
        assert ok.status_code == 200 and ok.json()["node"] == "n2"
        bad = client.get(f"{peer}/olladist/v1/status", headers={"X-Olladist-Peer": "x" * 64})
        assert bad.status_code == 403
        page = client.get(f"{peer}/olladist/v1/cluster", headers={"X-Olladist-Peer": secret})
        assert page.status_code == 404 and "error" in page.json()
    with httpx.Client(timeout=10, trust_env=False) as client:
        public = client.get(f"{cluster.gateway(0)}/olladist/v1/status")
        assert public.status_code == 404 and "error" in public.json()


def test_no_secret_in_page_or_json(cluster: Cluster, page: Page) -> None:
    """With API keys on and the peer secret in use, neither shows anywhere, nor the key's
    digest (what the node holds)."""
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    for n in cluster.nodes:
        keys = n.layout.real(API_KEYS_FILE)
        keys.write_text(digest + "\n")
    spec = cluster.repo / "cluster.yaml"
    spec.write_text(
        spec.read_text().replace("gateway: {", f"gateway: {{api_keys_file: {API_KEYS_FILE}, ", 1)
    )
    head = cluster.commit("API keys on")
    cluster.wait_converged(head, timeout=60)
    page.next_refresh()
    secret = cluster.nodes[0].layout.real(PEER_SECRET_FILE).read_text().split()[1]
    shown = [page.page.content()]
    with httpx.Client(timeout=10, trust_env=False) as client:
        for k in range(3):
            for path in ("/olladist/v1/cluster", "/olladist/v1/status", "/olladist/"):
                r = client.get(f"{stats(cluster, k)}{path}")
                assert r.status_code == 200, path
                shown.append(r.text)
    assert all(cluster.head()[:12] in s for s in shown[:2])  # the grep sees real content
    for text in shown:
        for needle in (secret, API_KEY, digest):
            assert needle not in text


def test_commit_adding_a_model_shows_it_on_its_holders(cluster: Cluster, page: Page) -> None:
    cluster.write_spec(DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 2}\n")
    spec = cluster.repo / "cluster.yaml"
    spec.write_text(
        spec.read_text().replace("gateway: {", f"gateway: {{api_keys_file: {API_KEYS_FILE}, ", 1)
    )
    head = cluster.commit("add mistral")
    cluster.wait_converged(head, timeout=60)
    page.next_refresh()
    holders = placement(cluster)["mistral:7b"]
    assert len(holders) == 2
    row = page.table()["mistral:7b"]
    assert {n for n, c in row.items() if c["placed"] == "true"} == holders
    assert {n for n, c in row.items() if c["present"] == "true"} == holders
    assert page.errors == []


def test_a_pull_in_progress_shows_as_a_transfer_with_bytes_and_rate(
    cluster: Cluster, page: Page
) -> None:
    # Slow pulls (the simulator's rate is in the instances' environment) and one more model.
    cluster.write_spec(
        DEFAULT_MODELS + "  - {name: mistral:7b, replicas: 2}\n  - {name: phi3:mini, replicas: 1}\n"
    )
    spec = cluster.repo / "cluster.yaml"
    text = spec.read_text().replace("gateway: {", f"gateway: {{api_keys_file: {API_KEYS_FILE}, ", 1)
    spec.write_text(text.replace("OLLADIST_SIM_PULL_GBPS: '50'", "OLLADIST_SIM_PULL_GBPS: '0.1'"))
    head = cluster.commit("phi3, pulled slowly")
    [holder] = placement(cluster)["phi3:mini"]
    rows = page.page.locator("#transfers tbody tr", has_text="phi3:mini")
    deadline = time.monotonic() + 90
    while rows.count() == 0 or "%" not in rows.first.inner_text():
        assert time.monotonic() < deadline, "no transfer shown for phi3:mini"
        assert not cluster.converged(head), "the pull ended before the page showed it"
        time.sleep(0.1)
    cells = rows.first.locator("td").all_inner_texts()
    assert cells[0] == holder and cells[1] == "phi3:mini"
    assert " of 2.2 GB" in cells[3] and cells[4].endswith("/s")
    cluster.wait_converged(head, timeout=90)
    page.next_refresh()
    assert page.page.locator("#transfers tbody tr", has_text="phi3:mini").count() == 0
    assert page.errors == []


def test_stopped_node_shows_unreachable_within_one_refresh(
    cluster: Cluster, page: Page, browser: Any, tmp_path: Path
) -> None:
    # A request loads a model: the table says where.
    with httpx.Client(timeout=30, trust_env=False) as client:
        r = client.post(
            f"{cluster.gateway(0)}/api/generate",
            json={"model": "llama3.2:1b", "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 200, r.text
    cluster.stop_node(cluster.nodes[2])
    page.next_refresh()
    assert page.node_states() == {"n1": "ok", "n2": "ok", "n3": "unreachable"}
    card = page.page.locator("#nodes article[data-node=n3]").inner_text()
    assert "unreachable" in card.lower() and "last seen" in card and " ago (" in card
    table = page.table()
    assert {c["present"] for c in (row["n3"] for row in table.values())} == {"null"}
    loaded = {n for n, c in table["llama3.2:1b"].items() if c["loaded"] == "true"}
    # The node that served it, and maybe its other holder (the check after apply loads each
    # model once), never a node that does not hold it.
    assert loaded and loaded <= placement(cluster)["llama3.2:1b"]
    assert page.errors == []
    page.screenshot(tmp_path, "status-page.png")
    phone = Page(browser, page.page.url)
    phone.page.set_viewport_size(PHONE)
    phone.next_refresh()
    # Nothing wider than the phone's screen but the tables, which scroll in their own box.
    width = phone.page.locator("body").bounding_box()["width"]
    assert width <= PHONE["width"]
    phone.screenshot(tmp_path, "status-page-phone.png")
    assert phone.errors == []
