"""The catalog schema: the only module that writes DDL. Migrations are append-only.

Every key is a content hash of what the row is (see `stillroom.hashing`), so any
stage can be re-run and re-inserting the same row is a no-op.
"""

from __future__ import annotations

import duckdb

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            run_id       VARCHAR PRIMARY KEY,
            kind         VARCHAR NOT NULL,
            flow_run_id  VARCHAR,
            status       VARCHAR NOT NULL,
            params       JSON,
            summary      JSON,
            started_at   TIMESTAMP NOT NULL,
            finished_at  TIMESTAMP
        );
        CREATE TABLE teachers (
            teacher_id         VARCHAR PRIMARY KEY,
            name               VARCHAR NOT NULL UNIQUE,
            model              VARCHAR NOT NULL,
            revision           VARCHAR,
            license            VARCHAR NOT NULL,
            gpu_hour_usd       DOUBLE,
            per_1m_tokens_usd  DOUBLE,
            registered_at      TIMESTAMP NOT NULL
        );
        CREATE TABLE license_grants (
            teacher_id  VARCHAR NOT NULL,
            reference   VARCHAR NOT NULL,
            granted_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (teacher_id, reference)
        );
        CREATE TABLE prompts (
            prompt_id   VARCHAR PRIMARY KEY,
            text        VARCHAR NOT NULL,
            is_chat     BOOLEAN NOT NULL,
            source      VARCHAR NOT NULL,
            task        VARCHAR,
            reference   JSON,
            meta        JSON,
            created_at  TIMESTAMP NOT NULL
        );
        CREATE TABLE responses (
            response_id    VARCHAR PRIMARY KEY,
            request_key    VARCHAR NOT NULL,
            sample_index   INTEGER NOT NULL,
            prompt_id      VARCHAR NOT NULL,
            teacher_id     VARCHAR NOT NULL,
            rendered_prompt VARCHAR NOT NULL,
            text           VARCHAR NOT NULL,
            prompt_tokens  INTEGER NOT NULL,
            output_tokens  INTEGER NOT NULL,
            finish_reason  VARCHAR,
            token_ids      INTEGER[] NOT NULL,
            soft_labels    BLOB,
            topk_k         SMALLINT NOT NULL,
            sampling       JSON NOT NULL,
            latency_s      DOUBLE,
            usd            DOUBLE,
            run_id         VARCHAR NOT NULL,
            created_at     TIMESTAMP NOT NULL
        );
        CREATE INDEX responses_request ON responses (request_key);
        CREATE TABLE request_failures (
            request_key  VARCHAR NOT NULL,
            prompt_id    VARCHAR NOT NULL,
            teacher_id   VARCHAR NOT NULL,
            reason       VARCHAR NOT NULL,
            attempts     INTEGER NOT NULL,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL,
            PRIMARY KEY (request_key, run_id)
        );
        CREATE TABLE verdicts (
            response_id  VARCHAR NOT NULL,
            stage        VARCHAR NOT NULL,
            config_hash  VARCHAR NOT NULL,
            keep         BOOLEAN NOT NULL,
            reason       VARCHAR,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL,
            PRIMARY KEY (response_id, stage, config_hash)
        );
        CREATE TABLE datasets (
            dataset_id   VARCHAR PRIMARY KEY,
            name         VARCHAR,
            n_rows       INTEGER NOT NULL,
            config       JSON NOT NULL,
            manifest     JSON NOT NULL,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL
        );
        CREATE TABLE dataset_rows (
            dataset_id   VARCHAR NOT NULL,
            position     INTEGER NOT NULL,
            response_id  VARCHAR NOT NULL,
            PRIMARY KEY (dataset_id, position)
        );
        CREATE TABLE students (
            student_id   VARCHAR PRIMARY KEY,
            name         VARCHAR NOT NULL UNIQUE,
            dataset_id   VARCHAR,
            path         VARCHAR NOT NULL,
            init         VARCHAR NOT NULL,
            config       JSON NOT NULL,
            provenance   JSON NOT NULL,
            metrics      JSON,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL
        );
        CREATE TABLE eval_results (
            eval_id            VARCHAR PRIMARY KEY,
            model_kind         VARCHAR NOT NULL,
            model_name         VARCHAR NOT NULL,
            suite              VARCHAR NOT NULL,
            suite_hash         VARCHAR NOT NULL,
            n_items            INTEGER NOT NULL,
            accuracy           DOUBLE NOT NULL,
            ci_low             DOUBLE NOT NULL,
            ci_high            DOUBLE NOT NULL,
            agreement          DOUBLE,
            output_tokens      INTEGER NOT NULL,
            wall_s             DOUBLE NOT NULL,
            tokens_per_s       DOUBLE NOT NULL,
            usd_per_1m_tokens  DOUBLE,
            run_id             VARCHAR NOT NULL,
            created_at         TIMESTAMP NOT NULL
        );
        CREATE TABLE eval_items (
            eval_id   VARCHAR NOT NULL,
            item_id   VARCHAR NOT NULL,
            prompt    VARCHAR NOT NULL,
            output    VARCHAR NOT NULL,
            expected  VARCHAR,
            score     DOUBLE NOT NULL,
            PRIMARY KEY (eval_id, item_id)
        );
        """,
    ),
    (
        2,
        """
        -- Near-duplicate state, persisted so each night hashes only its new rows.
        CREATE TABLE minhash_signatures (
            response_id  VARCHAR NOT NULL,
            params_hash  VARCHAR NOT NULL,
            signature    BLOB NOT NULL,
            PRIMARY KEY (response_id, params_hash)
        );
        CREATE TABLE minhash_bands (
            params_hash  VARCHAR NOT NULL,
            band_key     UBIGINT NOT NULL,
            response_id  VARCHAR NOT NULL
        );
        CREATE TABLE embeddings (
            response_id  VARCHAR NOT NULL,
            model        VARCHAR NOT NULL,
            vector       FLOAT[] NOT NULL,
            PRIMARY KEY (response_id, model)
        );
        -- Every row a dedupe stage dropped, and the representative it was kept in favour of.
        CREATE TABLE duplicate_links (
            response_id        VARCHAR NOT NULL,
            stage              VARCHAR NOT NULL,
            config_hash        VARCHAR NOT NULL,
            representative_id  VARCHAR NOT NULL,
            similarity         DOUBLE NOT NULL,
            PRIMARY KEY (response_id, stage, config_hash)
        );
        CREATE TABLE diversity_reports (
            report_id   VARCHAR PRIMARY KEY,
            scope       VARCHAR NOT NULL,
            report      JSON NOT NULL,
            run_id      VARCHAR NOT NULL,
            created_at  TIMESTAMP NOT NULL
        );
        -- Teacher-written instructions (Self-Instruct, Evol-Instruct), accepted or gated
        -- out with the reason; keyed by request so a re-run never repeats a finished call.
        CREATE TABLE expansions (
            request_key  VARCHAR PRIMARY KEY,
            parent_id    VARCHAR,
            teacher_id   VARCHAR NOT NULL,
            method       VARCHAR NOT NULL,
            text         VARCHAR NOT NULL,
            accepted     BOOLEAN NOT NULL,
            reason       VARCHAR,
            run_id       VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL
        );
        -- Seed rows a prompt source could not use, kept with the reason when the user
        -- chose to report rather than refuse them.
        CREATE TABLE rejected_seeds (
            source      VARCHAR NOT NULL,
            location    VARCHAR NOT NULL,
            reason      VARCHAR NOT NULL,
            content     VARCHAR NOT NULL,
            run_id      VARCHAR NOT NULL,
            created_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (location, run_id)
        );
        """,
    ),
    (
        4,
        """
        -- Embeddings were keyed by the encoder's install path; they are now keyed by a
        -- digest of its files, the embedded text's definition and the pooling
        -- (`embeddings.embedding_key`). No stored vector can be matched to such a key,
        -- and all are recomputable, so the table starts empty under its new key column.
        DROP TABLE embeddings;
        CREATE TABLE embeddings (
            response_id    VARCHAR NOT NULL,
            embedding_key  VARCHAR NOT NULL,
            vector         FLOAT[] NOT NULL,
            PRIMARY KEY (response_id, embedding_key)
        );
        -- Signature keys now cover the shingling rules and the signed text too: every
        -- signature and band key stored so far is under a key no run will ask for again.
        DELETE FROM minhash_bands;
        DELETE FROM minhash_signatures;
        """,
    ),
    (
        5,
        """
        -- False where a backend could not get the sampled ids from the server and
        -- re-tokenised the text (a plain OpenAI-compatible server); earlier rows all came
        -- with the engine's own ids.
        ALTER TABLE responses ADD COLUMN token_ids_exact BOOLEAN DEFAULT true;
        COMMENT ON COLUMN responses.latency_s IS
            'seconds from this request''s submission to its completion (see its backend)';
        """,
    ),
    (
        6,
        """
        -- Crash reconciliation: which process runs each run, and when it last showed life.
        -- process_start is the boot id and start tick of that pid, so a reused pid is told apart.
        ALTER TABLE runs ADD COLUMN host VARCHAR;
        ALTER TABLE runs ADD COLUMN pid INTEGER;
        ALTER TABLE runs ADD COLUMN process_start VARCHAR;
        ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMP;
        -- Every license change of a registered teacher, with the license it replaced.
        CREATE TABLE teacher_license_changes (
            teacher_id        VARCHAR NOT NULL,
            previous_license  VARCHAR NOT NULL,
            license           VARCHAR NOT NULL,
            changed_at        TIMESTAMP NOT NULL
        );
        -- Expansion calls are priced like generation calls.
        ALTER TABLE expansions ADD COLUMN output_tokens INTEGER;
        ALTER TABLE expansions ADD COLUMN usd DOUBLE;
        -- Eval items are committed as they finish; each carries its share of tokens and time
        -- so a resumed eval still reports tokens/s over every item.
        ALTER TABLE eval_items ADD COLUMN output_tokens INTEGER;
        ALTER TABLE eval_items ADD COLUMN wall_s DOUBLE;
        -- A suite that does not name `accuracy` stores NULL there.
        ALTER TABLE eval_results ALTER COLUMN accuracy DROP NOT NULL;
        ALTER TABLE eval_results ALTER COLUMN ci_low DROP NOT NULL;
        ALTER TABLE eval_results ALTER COLUMN ci_high DROP NOT NULL;
        """,
    ),
    (
        7,
        """
        -- Students are versioned (`name@N`) and never overwritten: the unique name becomes a
        -- unique (name, version); each row records the digest of its weight files and the key
        -- of what built them (teacher cut or dataset + init + training config).
        CREATE TABLE students_v7 (
            student_id      VARCHAR PRIMARY KEY,
            name            VARCHAR NOT NULL,
            version         INTEGER NOT NULL,
            dataset_id      VARCHAR,
            path            VARCHAR NOT NULL,
            init            VARCHAR NOT NULL,
            config          JSON NOT NULL,
            provenance      JSON NOT NULL,
            metrics         JSON,
            weights_digest  VARCHAR,
            build_key       VARCHAR,
            run_id          VARCHAR NOT NULL,
            created_at      TIMESTAMP NOT NULL,
            UNIQUE (name, version)
        );
        INSERT INTO students_v7
            SELECT student_id, name, 1, dataset_id, path, init, config, provenance, metrics,
                   NULL, NULL, run_id, created_at
            FROM students;
        DROP TABLE students;
        ALTER TABLE students_v7 RENAME TO students;
        """,
    ),
    (
        8,
        """
        -- Each row's normalised-subject hash, stored once when exact dedupe first judges
        -- it, so a night compares its new rows with earlier kept ones in SQL.
        -- `hash_key` covers the subject's definition and the normalisation's version.
        CREATE TABLE subject_hashes (
            response_id  VARCHAR NOT NULL,
            hash_key     VARCHAR NOT NULL,
            hash         VARCHAR NOT NULL,
            PRIMARY KEY (response_id, hash_key)
        );
        -- A version's rows are stored as a sequence of chunks shared by content: a
        -- version that adds rows to its predecessor writes only its new chunks.
        -- `dataset_rows` stays readable, as a view with every version's full row set.
        CREATE TABLE row_chunks (
            chunk_id     VARCHAR NOT NULL,
            position     INTEGER NOT NULL,
            response_id  VARCHAR NOT NULL,
            PRIMARY KEY (chunk_id, position)
        );
        CREATE TABLE dataset_chunks (
            dataset_id   VARCHAR NOT NULL,
            seq          INTEGER NOT NULL,
            chunk_id     VARCHAR NOT NULL,
            start        INTEGER NOT NULL,
            PRIMARY KEY (dataset_id, seq)
        );
        -- Existing versions become one chunk each, named after the version.
        INSERT INTO row_chunks
            SELECT 'version:' || dataset_id, position, response_id FROM dataset_rows;
        INSERT INTO dataset_chunks
            SELECT DISTINCT dataset_id, 0, 'version:' || dataset_id, 0 FROM dataset_rows;
        DROP TABLE dataset_rows;
        CREATE VIEW dataset_rows AS
            SELECT c.dataset_id, c.start + r.position AS position, r.response_id
            FROM dataset_chunks c JOIN row_chunks r USING (chunk_id);
        """,
    ),
    (
        9,
        """
        -- How each generation run captured its rows: engine and its version, logprob mode,
        -- tokenizer fingerprint, teacher revision, prompt tokenisation rule (a run has one
        -- teacher, one engine and one sampling config; k and the soft-label codec version
        -- are on each row already). Runs before this migration have none.
        CREATE TABLE captures (
            run_id      VARCHAR PRIMARY KEY,
            teacher_id  VARCHAR NOT NULL,
            record      JSON NOT NULL,
            created_at  TIMESTAMP NOT NULL
        );
        """,
    ),
    (
        10,
        """
        -- The prompt format an eval gave the model: the suite's prompts as written
        -- ('teacher') or each item's question alone ('zero_shot', for students trained so).
        ALTER TABLE eval_results ADD COLUMN prompt_format VARCHAR DEFAULT 'teacher';
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def current_version(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    )
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration newer than the catalog's version, each in its own transaction."""
    version = current_version(conn)
    for number, ddl in MIGRATIONS:
        if number <= version:
            continue
        conn.execute("BEGIN TRANSACTION")
        conn.execute(ddl)
        conn.execute("INSERT INTO schema_version VALUES (?, now())", [number])
        conn.execute("COMMIT")
        version = number
    return version
