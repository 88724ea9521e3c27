"""The state database (landing index, sync marks, embedding usage) on PostgreSQL: the local
cluster of ``scripts/local_postgres.sh`` (root; skipped otherwise). Not in the Milvus server
suite, whose network namespace cannot reach that cluster."""

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
