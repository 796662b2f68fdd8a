"""Stillroom dashboard (read-only): teachers vs their students, and a browser for responses."""

from __future__ import annotations

import altair as alt
import streamlit as st

from stillroom.catalog import Catalog
from stillroom.dashboard import queries
from stillroom.errors import StillroomError
from stillroom.runs import reconcile


def accuracy_chart(table) -> alt.LayerChart:
    """Accuracy per model with its 95% interval, coloured by teacher/student."""
    base = alt.Chart(table).encode(y=alt.Y("model:N", sort=None, title=None))
    bars = base.mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])), color="kind:N",
        tooltip=["model", "accuracy", "ci_low", "ci_high", "tokens_per_s"])
    whiskers = base.mark_rule(color="black").encode(x="ci_low:Q", x2="ci_high:Q")
    return (bars + whiskers).properties(height=40 * len(table) + 20)


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
            table[["teacher", "model", "kind", "items", "accuracy", "interval", "agreement",
                   "tokens_per_s", "usd_per_1m_tokens"]],
            hide_index=True,
            column_config={
                "accuracy": st.column_config.ProgressColumn(
                    "accuracy", format="%.3f", min_value=0.0, max_value=1.0),
                "interval": "95% CI", "agreement": st.column_config.NumberColumn(format="%.2f"),
                "tokens_per_s": st.column_config.NumberColumn("tok/s", format="%.1f"),
                "usd_per_1m_tokens": st.column_config.NumberColumn("$ / 1M tok", format="%.4f"),
            })
        st.altair_chart(accuracy_chart(table), use_container_width=True)
    st.subheader("Students and their provenance")
    st.dataframe(queries.students(catalog), hide_index=True)


def browse(catalog: Catalog) -> None:
    st.title("Responses")
    teachers = queries.teacher_names(catalog)
    left, mid, right = st.columns(3)
    teacher = left.selectbox("Teacher", ["all", *teachers])
    status = mid.radio("Rows", ["all", "kept", "dropped"], horizontal=True)
    limit = right.number_input("Show at most", 10, 5000, 200, step=50)
    reasons = queries.drop_reasons(catalog)
    if not reasons.empty:
        with st.expander(f"Why rows were dropped ({int(reasons['rows'].sum())} verdicts)"):
            st.dataframe(reasons, hide_index=True)
    rows = queries.responses(catalog, None if teacher == "all" else teacher, status, int(limit))
    st.caption(f"{len(rows)} responses")
    st.dataframe(rows, hide_index=True, column_config={
        "kept": st.column_config.CheckboxColumn("kept"),
        "prompt": st.column_config.TextColumn(width="medium"),
        "dropped_because": st.column_config.TextColumn("dropped because", width="medium")})
    if not rows.empty:
        inspect(catalog, st.selectbox("Inspect a response", rows["response_id"]))


def inspect(catalog: Catalog, response_id: str) -> None:
    detail = queries.response_detail(catalog, response_id)
    latency = detail["latency_s"]
    st.markdown(f"**Teacher** {detail['teacher']} · license `{detail['license']}` · revision "
                f"`{detail['revision'] or 'unpinned'}` · request latency (submitted to "
                f"completed) {f'{latency:.2f}s' if latency is not None else 'not recorded'}")
    left, right = st.columns(2)
    left.text_area("Prompt as sent", detail["prompt"], height=220, disabled=True)
    right.text_area("Response", detail["text"], height=220, disabled=True)
    st.dataframe(detail["verdicts"], hide_index=True)
    if not detail["duplicates"].empty:
        st.caption(f"Representative of {len(detail['duplicates'])} dropped duplicate(s)")
        st.dataframe(detail["duplicates"], hide_index=True)
    if detail["topk_ids"]:
        st.caption("Soft labels: the teacher's top-k at each generated token (first 8 tokens)")
        st.dataframe([{"step": i, "token": token, "top ids": ids[:5],
                       "top logprobs": [round(x, 3) for x in lps[:5]]}
                      for i, (token, ids, lps) in enumerate(zip(
                          detail["token_ids"], detail["topk_ids"], detail["topk_logprobs"],
                          strict=False)) if i < 8], hide_index=True)


def data(catalog: Catalog) -> None:
    st.title("Dataset versions")
    versions = queries.dataset_versions(catalog)
    if versions.empty:
        st.info("No dataset versions yet: run `stillroom dataset cut` or `stillroom demo`.")
        return
    st.dataframe(versions, hide_index=True)
    labels = {f"{r.dataset_id} · {r.name or '-'} · {r.rows} rows": r.dataset_id
              for r in versions.itertuples()}
    chosen = labels[st.selectbox("Diversity of", list(labels))]
    report = queries.diversity(catalog, chosen)
    if report is None:
        st.info(f"No diversity report for this version: `stillroom dataset report {chosen}`.")
    else:
        cols = st.columns(5)
        cols[0].metric("prompt distinct-2", report["prompts"]["distinct_2"])
        cols[1].metric("response distinct-2", report["responses"]["distinct_2"])
        cols[2].metric("embedding coverage", report["embedding"]["coverage"])
        cols[3].metric("clusters (effective / k)",
                       f"{report['embedding']['effective_clusters']} / {report['embedding']['k']}")
        cols[4].metric("topic evenness", report["balance"]["topic"]["evenness"])
        for axis in ("source", "topic"):
            counts = report["balance"][axis]["counts"]
            st.caption(f"Rows per {axis}")
            st.bar_chart({axis: list(counts), "rows": list(counts.values())}, x=axis, y="rows")
    st.subheader("Largest duplicate clusters")
    st.dataframe(queries.clusters(catalog), hide_index=True)


def main() -> None:
    st.set_page_config(page_title="Stillroom", layout="wide")
    catalog = Catalog()
    reconcile(catalog)  # a run whose process died shows as crashed, not running
    pages = {"Overview": overview, "Responses": browse, "Datasets": data}
    choice = st.sidebar.radio("Page", list(pages))
    st.sidebar.caption(f"Catalog: {catalog.path}")
    try:
        pages[choice](catalog)
    except StillroomError as exc:
        st.error(str(exc))


main()
