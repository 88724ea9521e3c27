"""The state database (landing index, sync marks, embedding usage) on PostgreSQL: the local
cluster of ``scripts/local_postgres.sh`` (root; skipped otherwise). Not in the Milvus server
suite, whose network namespace cannot reach that cluster."""

import json

import pytest
import sqlalchemy as sa

from vector_assets import state

from .conftest import use_local_postgres


def test_state_upserts_on_postgres_in_pages_keep_their_meaning(monkeypatch):
    """The state database on PostgreSQL sends a list of rows in pages (SQLAlchemy's
    ``values_plus_batch``, psycopg2's ``execute_batch``), not a round trip per row; what the
    statements mean is kept: a repeated key's last row wins an upsert, ``update=False`` keeps the
    first, and ``add_counts`` adds every row's counts, repeats included."""
    use_local_postgres(monkeypatch, "va_test_state_pages")
    url = state.state_url()
    assert url.startswith("postgresql+psycopg2://")
    state.dispose_engines()
    engine = state.engine(url)
    assert "BATCH" in str(engine.dialect.executemany_mode)  # SQLAlchemy pages the rows
    try:
        rows = [{"source": "s", "store": "c", "tenant": f"t{i % 700}", "day": "2024-01-01", "fingerprint": f"v{i}", "rows": i} for i in range(1400)]
        with engine.begin() as conn:
            state.upsert(conn, state.synced, rows, ["source", "store", "tenant", "day"])
            state.upsert(conn, state.partitions_seen, [{"source": "s", "tenant": "t1", "day": d} for d in ("2024-01-01", "2024-01-01", "2024-01-02")], ["source", "tenant", "day"], update=False)
            counts = [{"source": "s", "tenant": "t1", "model": "m", "passages": 2, "tokens": 10, "updated_at": float(i)} for i in range(3)]
            state.add_counts(conn, state.embedding_usage, counts, ["source", "tenant", "model"], ["passages", "tokens"])
            state.add_counts(conn, state.embedding_usage, counts[:1], ["source", "tenant", "model"], ["passages", "tokens"])
        with engine.connect() as conn:
            synced = dict(conn.execute(sa.select(state.synced.c.tenant, state.synced.c.fingerprint)).all())
            seen = conn.execute(sa.select(sa.func.count()).select_from(state.partitions_seen)).scalar()
            usage = conn.execute(sa.select(state.embedding_usage.c.passages, state.embedding_usage.c.tokens)).all()
        assert len(synced) == 700 and synced["t1"] == "v701" and synced["t699"] == "v1399"
        assert seen == 2 and usage == [(8, 40)]
    finally:
        state.dispose_engines()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_landing_lines_are_read_per_group_of_tenants(dialect, tmp_path, monkeypatch):
    """The landing index reads a run's tenant-days in one query per group of tenants
    (``state.partition_groups``), not in lists of ``(tenant, day)`` pairs; lines of tenant-days
    the group spans but nobody asked for are dropped: reads and fingerprints equal those of one
    tenant-day at a time, on real Jira records."""
    from vector_assets.ingest.landing import LandingIndex

    from .conftest import sample_records, write_jsonl

    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        use_local_postgres(monkeypatch, "va_test_state_groups")
        url = state.state_url()
    base = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2024-07-12")
    tenants = ["HADOOP", "HDFS", "YARN"]
    write_jsonl(tmp_path / "landing" / "jira.jsonl", [dict(r, tenant=t, id=r["id"].replace("HADOOP", t)) for t in tenants for r in base])
    index = LandingIndex(tmp_path / "landing", url)
    index.refresh()
    days = sorted({r["day"] for r in base})
    assert len(days) >= 4
    # HADOOP and HDFS ask for every day, YARN for its first and last only: one group.
    keys = [(t, d) for t in tenants[:2] for d in days] + [("YARN", days[0]), ("YARN", days[-1])]
    assert state.partition_groups(keys) == [(["HADOOP", "HDFS", "YARN"], days)]
    selects = []
    engine = state.engine(url)
    listen = lambda conn, cursor, statement, *rest: selects.append(statement) if "va_lines" in statement and statement.lstrip().upper().startswith("SELECT") else None  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        together = index.read_partitions(keys)
        prints = index.fingerprints(keys)
        assert len(selects) == 2 and not any("(va_lines.tenant, va_lines.day) IN" in s for s in selects)  # one query each, no pair lists
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    assert sorted(together) == sorted(keys) and sorted(prints) == sorted(keys)
    for key in keys:
        alone = index.read_partitions([key])[key]
        expected = [r["id"].replace("HADOOP", key[0]) for r in base if r["day"] == key[1]]
        assert [x.record["id"] for x in together[key].records] == [x.record["id"] for x in alone.records]
        assert sorted(x.record["id"] for x in together[key].records) == sorted(expected) and expected
        assert prints[key] == together[key].fingerprint == index.fingerprints([key])[key] != ""
    if dialect == "postgresql":
        state.dispose_engines()


def test_run_weights_follow_the_landing_bytes_not_the_line_count(tmp_path):
    """``LandingIndex.line_weights``: a tenant-day weighs its lines' bytes in mean lines, so two
    workers' runs split real Jira issues (long) and real commits (short) by size: equal line
    counts, unequal weights, and a lighter heaviest run than a plan by line counts."""
    from collections import Counter

    from vector_assets.ingest.landing import LandingIndex
    from vector_assets.partitions import plan_tenant_runs

    from .conftest import sample_records, write_jsonl

    issues = sample_records("jira_issues_hadoop.jsonl", "HADOOP", "2024-07-01", "2025-12-31")[:40]
    commits = sample_records("git_commits.jsonl", "pallets/flask", "2024-01-01", "2026-12-31")[:40]
    assert len(issues) == len(commits) == 40
    rows = {t: [dict(r, tenant=t, id=r["id"].replace("HADOOP", t)) for r in issues] for t in ("long-a", "long-b")}
    rows |= {t: [dict(r, tenant=t, sha=t[-1] + r["sha"][1:]) for r in commits] for t in ("short-c", "short-d")}
    write_jsonl(tmp_path / "landing" / "jira.jsonl", rows["long-a"] + rows["long-b"])
    write_jsonl(tmp_path / "landing" / "commits.jsonl", rows["short-c"] + rows["short-d"])
    index = LandingIndex(tmp_path / "landing", f"sqlite:///{tmp_path / 'state.db'}")
    index.refresh()
    weights = index.line_weights()
    per_tenant = Counter()
    for (tenant, _), w in weights.items():
        per_tenant[tenant] += w
    assert set(per_tenant) == set(rows) and min(weights.values()) >= 1
    size = {t: sum(len(json.dumps(r).encode()) for r in rows[t]) for t in rows}
    assert size["long-a"] > 2 * size["short-c"]  # what the test is about: same lines, other bytes
    assert per_tenant["long-a"] == per_tenant["long-b"] > 2 * per_tenant["short-c"] and per_tenant["short-c"] == per_tenant["short-d"]
    assert abs(per_tenant["long-a"] / per_tenant["short-c"] - size["long-a"] / size["short-c"]) < 0.15 * size["long-a"] / size["short-c"]
    assert abs(sum(weights.values()) - 160) <= len(weights) / 2 + 1  # about the line count in all (rounding per tenant-day)
    order = ["long-a", "long-b", "short-c", "short-d"]
    lines = {p: n for p, n in Counter((r["tenant"], r["day"]) for t in rows for r in rows[t]).items()}
    assert set(lines) == set(weights)

    def plan(w):
        return plan_tenant_runs(sorted(w), order, weights=w, max_weight=int(sum(w.values()) * 1.25 / 2), min_runs=2, run_cost_s=1e9)

    def heaviest(runs):
        return max(sum(per_tenant[t] for t in r.tenants) for r in runs)

    by_lines, by_bytes = plan(lines), plan(weights)
    assert sorted(r.tenants for r in by_lines) == [("long-a", "long-b"), ("short-c", "short-d")]
    assert len(by_bytes) == 2 and heaviest(by_bytes) < heaviest(by_lines)
