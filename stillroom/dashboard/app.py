"""Stillroom dashboard (read-only): teachers vs their students, and a browser for responses."""

from __future__ import annotations

import streamlit as st

from stillroom.catalog import Catalog
from stillroom.dashboard import queries
from stillroom.errors import StillroomError


def overview(catalog: Catalog) -> None:
    st.title("Teachers and students")
    counts = queries.counts(catalog)
    cols = st.columns(len(counts))
    for col, (name, value) in zip(cols, counts.items(), strict=True):
        col.metric(name.replace("_", " "), value)
    evals = queries.latest_evals(catalog)
    if evals.empty:
        st.info("No benchmark results yet: run `stillroom eval` or `stillroom demo`.")
        return
    for suite, table in evals.groupby("suite"):
        st.subheader(f"Suite: {suite}")
        table = table.assign(
            interval=table.apply(lambda r: f"[{r.ci_low:.2f}, {r.ci_high:.2f}]", axis=1))
        st.dataframe(
            table[["model", "kind", "items", "accuracy", "interval", "agreement", "tokens_per_s",
                   "usd_per_1m_tokens"]],
            hide_index=True,
            column_config={
                "accuracy": st.column_config.ProgressColumn(
                    "accuracy", format="%.3f", min_value=0.0, max_value=1.0),
                "interval": "95% CI", "agreement": st.column_config.NumberColumn(format="%.2f"),
                "tokens_per_s": st.column_config.NumberColumn("tok/s", format="%.1f"),
                "usd_per_1m_tokens": st.column_config.NumberColumn("$ / 1M tok", format="%.4f"),
            })
        st.bar_chart(table, x="model", y="accuracy")
    st.subheader("Students and their provenance")
    st.dataframe(queries.students(catalog), hide_index=True)


def browse(catalog: Catalog) -> None:
    st.title("Responses")
    teachers = queries.teacher_names(catalog)
    left, mid, right = st.columns(3)
    teacher = left.selectbox("Teacher", ["all", *teachers])
    status = mid.radio("Rows", ["all", "kept", "dropped"], horizontal=True)
    limit = right.number_input("Show at most", 10, 5000, 200, step=50)
    rows = queries.responses(catalog, None if teacher == "all" else teacher, status, int(limit))
    st.caption(f"{len(rows)} responses")
    st.dataframe(rows, hide_index=True, column_config={
        "kept": st.column_config.CheckboxColumn("kept"),
        "prompt": st.column_config.TextColumn(width="medium"),
        "response": st.column_config.TextColumn(width="medium")})


def main() -> None:
    st.set_page_config(page_title="Stillroom", layout="wide")
    catalog = Catalog()
    pages = {"Overview": overview, "Responses": browse}
    choice = st.sidebar.radio("Page", list(pages))
    st.sidebar.caption(f"Catalog: {catalog.path}")
    try:
        pages[choice](catalog)
    except StillroomError as exc:
        st.error(str(exc))


main()
