"""The OpenAPI document is the truth: schemathesis (4.32+) against the in-process app, every check.

The app's own /openapi.json (create_app(..., docs=True)) is loaded as a client would and schemathesis'
engine runs it as `st run --checks all --mode all` does: its probing, examples, coverage, fuzzing and
stateful phases, positive and negative data, the API key sent as `Authorization: Bearer <key>` (the
`bearer` security scheme), over the same models and config as the `inproc` fixture (tests/conftest.py,
the app's item limit of 64 included). Zero failures: every status the app answers is documented
with that protocol's error body, every response matches its schema, what the schema allows is
accepted and what it forbids is refused, and the security schemes are enforced.

Two settings, each for a documented reason, narrow what a check calls a failure (never a whole check):
- negative_data_rejection also takes 413: a list over `maxItems` (the app's max_items_per_request) is
  refused as RFC 9110 §15.5.14 has it, "413 Content Too Large: the request content is larger than the
  server is willing to process", the status the app gives every over-limit request;
- positive_data_acceptance drops a refusal of a schema-valid request only where the refusal is one of
  SEMANTIC_REFUSALS: a rule of the request that JSON Schema (draft 2020-12, OpenAPI 3.1's Schema
  Object) has no keyword for, or that depends on the served models rather than on the route, each
  stated in the document's descriptions instead. Every other check still runs on those answers
  (their status is documented, their body is the protocol's error schema).

Reproducible (a fixed seed, deterministic generation); the figures are printed at the end of the run.
Run with `pytest -m reliability tests/reliability/test_reliability_openapi.py`.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
import schemathesis
from helpers import API_KEY
from schemathesis.config import ChecksConfig, SchemathesisConfig
from schemathesis.engine import events
from schemathesis.openapi.checks import RejectedPositiveData

pytestmark = pytest.mark.reliability
REJECTIONS = ChecksConfig().negative_data_rejection.expected_statuses  # schemathesis' own: 400, 401, ... 5xx

MAX_EXAMPLES = 200  # per operation and phase: about 1 minute on the 2-core box (400: 2.5, 1000: 5; no more failures)
SEED = 27

# refusals of a schema-valid request for a rule JSON Schema cannot state: name -> (a pattern of the
# error message, why the schema cannot say it). Each is said in the document's descriptions instead.
SEMANTIC_REFUSALS = {
    "last_message": (
        r"the last message must be the assistant's response",
        "a conversation ends with the response to score: JSON Schema has no keyword for an array's last item",
    ),
    "model_kind": (
        r"is an? [a-z ]+; (this route needs a|/\S+ answers)|is an? [a-z ]+: its [a-z ]+ (are|is) served by|"
        r"is an? [a-z ]+, not a causal LM",
        "`model` names a served model of another kind than the route's: which name is which kind is the "
        "app's configuration (GET /v1/models), not the route's",
    ),
    "ensemble": (
        r"is an ensemble of (reward )?models|'[^']*' is an ensemble of several models",
        "an ensemble where one tokenizer is needed (token ids, /tokenize): configuration again",
    ),
    "multi_output": (r"has \d+ outputs; the score API needs a one-output model", "configuration again"),
    "step_task": (r"Task \S+ is not supported", "a per-step task where no process reward model is served"),
    "vocabulary": (r"outside this model's vocabulary", "a token id's top is the model's tokenizer's"),
    "step_tags": (
        r"no step tag|the step tag .* is found",
        "a process reward model's texts hold its own step tag, once per step: the model's configuration",
    ),
    "template_fields": (
        r"this judge's template uses it|items\[\d+\]: unknown field\(s\) .* \(expected prompt, response[,)]",
        "a pointwise judge's items carry the texts its template names, no others: the model's configuration",
    ),
    "template_kwargs": (
        r"chat_template_kwargs: .* are not template variables",
        "a name transformers' apply_chat_template takes itself (tokenize, return_tensors, ...): the installed "
        "tokenizer's signature, not the route's",
    ),
    "max_length": (
        r"this model's (limit|max_length)|over what this model takes|tokenized whole up to",
        "an input over the model's max_length: JSON Schema counts characters, not a tokenizer's tokens",
    ),
    "padding_only": (
        r"once its padding and EOS tokens are stripped",
        "a text of nothing but the tokenizer's padding and EOS tokens",
    ),
    "pair_lengths": (
        r"Input lengths must be either 1:1, 1:N or N:N",
        "text_1 and text_2 of related lengths: JSON Schema cannot relate two arrays' lengths",
    ),
    "rid_count": (r"request id\(s\) for \d+ input\(s\)", "one rid per input: two arrays' lengths again"),
    "activation_names": (
        r"disagree: activation, softmax and normalize are older names of use_activation",
        "vLLM's four names of one switch, given with different values: JSON Schema cannot relate fields' values",
    ),
    "logprobs_together": (
        r"logprobs must be true when top_logprobs is used",
        "top_logprobs asks for more of what logprobs turns on (OpenAI's rule): one field's value given another's",
    ),
    "empty_prompt": (
        r"the prompt is empty once tokenized",
        "a generative score's query and item both empty: two fields' lengths together, and a tokenizer's",
    ),
}


def semantic_refusal(text: str) -> str | None:
    return next((name for name, (pattern, _) in SEMANTIC_REFUSALS.items() if re.search(pattern, text)), None)


@pytest.fixture(scope="module")
def documented_app(inproc):
    from cluster.http.app import create_app

    return create_app(inproc["service"], api_keys=[API_KEY], max_request_bytes=200_000, docs=True)


def run_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "checks": {
                "enabled": True,
                # 413 Content Too Large (RFC 9110 §15.5.14): a list over maxItems (see the module's docstring)
                "negative_data_rejection": {"expected-statuses": [*REJECTIONS, "413"]},
            },
            "auth": {"openapi": {"bearer": {"bearer": API_KEY}}},
            "request-timeout": 60,
        }
    )


def test_openapi_document_is_the_truth(documented_app, figures):
    started = time.monotonic()
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", documented_app, config=run_config(), headers={"Authorization": f"Bearer {API_KEY}"}
    )
    dropped = Counter()

    @schema.hook
    def filter_failure(ctx, failure, case, response) -> bool:
        """A schema-valid request refused for a rule JSON Schema cannot state (SEMANTIC_REFUSALS) is
        not a failure of positive_data_acceptance; anything else is."""
        if isinstance(failure, RejectedPositiveData) and response.status_code in (400, 413, 422):
            refusal = semantic_refusal(response.text)
            if refusal is not None:
                dropped[refusal] += 1
                return False
        return True

    failures: dict[tuple[str, str, str], list[str]] = {}
    cases, checks, statuses, operations, errors = 0, Counter(), Counter(), set(), []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            operations.add(recorder.label)
            cases += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    checks[node.status.value] += 1
                    if node.failure_info is not None:
                        failure = node.failure_info.failure
                        failures.setdefault((recorder.label, node.name, failure.title), []).append(
                            described(recorder.cases[case_id].value, recorder.interactions.get(case_id), failure)
                        )
        elif isinstance(event, events.NonFatalError):
            errors.append(f"error in {event.label}: {event.info.format()[:1000]}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    figures(
        operations=len(operations),
        cases=cases,
        checks=dict(checks),
        failures=sum(map(len, failures.values())),
        statuses=dict(sorted(statuses.items())),
        semantic_refusals=dict(sorted(dropped.items())),
        seconds=round(time.monotonic() - started, 1),
    )
    report = [
        f"{label} [{check}] {title} x{len(found)}:\n{found[0]}" for (label, check, title), found in failures.items()
    ]
    assert not errors and not failures, f"{len(failures)} kind(s) of failure:\n" + "\n".join(errors + report)


@pytest.mark.parametrize(
    "message",
    [
        "conversations[0][1].content: Input should be a valid string",
        "input[0]: the text is empty",
        "body: give exactly one of input or messages",
        "debias: Input should be a valid boolean",
        "items[0]: unknown field(s) ['x'] (expected prompt, response_a, response_b)",
        "truncate_prompt_tokens: Value error, must be -1 (the model's max_length) or at least 1, got 0",
        "At least one text element must be given",
    ],
)
def test_semantic_refusals_are_narrow(message):
    """What the schema states is never taken for a rule it cannot state."""
    assert semantic_refusal(message) is None


def described(case, interaction, failure) -> str:
    response = interaction.response if interaction else None
    meta = case.meta
    phase = f"{meta.phase.name.value} {getattr(meta.phase.data, 'description', '')}" if meta else "-"
    return (
        f"    {failure.message[:500]}\n    phase: {phase}\n"
        f"    request: {case.method} {case.formatted_path} query={case.query} "
        f"headers={dict(case.headers or {})} body={str(case.body)[:300]}\n    response: "
        + (f"{response.status_code} {response.content[:300]!r}" if response else "none")
    )
