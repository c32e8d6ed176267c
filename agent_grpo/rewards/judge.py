"""An LLM judge as the accuracy reward, for open-ended answers a string match cannot grade.

    judge = JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen2.5-72B-Instruct",
                        cache_path="runs/a/judge_cache.jsonl")
    Rubric([judge_accuracy(judge, weight=0.8), format_reward.with_weight(0.2), conditional_tool_bonus(weight=1.2)])
    deepeyes_rubric(judge=judge)          # the same, by option

Protocol (after DeepEyes' `vl_agent.py`, our own wording): the judge sees the question, the reference
answer and the text inside the model's `<answer>` and replies with a binary verdict, `Judgement: 1`
(same meaning) or `Judgement: 0`. Departures: the default temperature is 0 (DeepEyes samples at 0.3),
so a cached verdict is the verdict; a reply with no readable verdict is a *reward error* on that
trajectory (DeepEyes silently scores it 0); no in-context examples (the template says what counts as the
same answer; set your own `template` to add some). A missing or blank answer scores 0 without a call.

Any OpenAI-compatible endpoint works (`agent_grpo.api_client`). A group's distinct answers are judged
in a small thread pool; identical (question, answer, reference) triples share one call. Verdicts are
cached in memory and, with `cache_path`, in an append-only JSONL file keyed by (question, answer,
reference, judge model, prompt hash): a rerun or a resumed run asks nothing twice. A time-out after the
retries, a server that is down, a garbage reply: each becomes a `RewardError` for that trajectory
(`traj.reward_errors["accuracy"]`, scored 0), never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from agent_grpo.api_client import APIError, ChatAPIConfig, ChatClient, ChatMessage
from agent_grpo.rewards.rubric import RewardError, RewardFn, reward
from agent_grpo.store import _jsonl
from agent_grpo.trajectory import Trajectory

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a strict, fair grader of short answers."

DEFAULT_TEMPLATE = """\
Grade a model's answer to a question about an image against the reference answer.
The answer is correct when it means the same as the reference: a shorter or longer wording of the same \
content counts ("tan" for "The countertop is tan.", "left" for "It is on the left side."). A different \
object, colour, count, position, option or yes/no is wrong, and so is an answer that hedges between several.
Ignore grammar, case and style.

Question: {question}
Reference: {reference}
Answer: {answer}

Reply with exactly one line: "Judgement: 1" if the answer is correct, "Judgement: 0" if it is not."""

TEMPLATE_FIELDS = frozenset({"question", "answer", "reference"})


class JudgeConfig(ChatAPIConfig):
    """The judge endpoint (`ChatAPIConfig`'s fields) plus its prompt, sampling, cache and concurrency."""

    template: str = Field(
        default=DEFAULT_TEMPLATE,
        description="str.format template with {question} {answer} {reference}; write literal braces as {{ }}",
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=64, ge=1, description="of the judge's reply (a thinking judge needs more)")
    cache_path: Path | None = Field(
        default=None, description="append-only JSONL of verdicts, e.g. RUN/judge_cache.jsonl; None: in memory only"
    )
    workers: int = Field(default=4, ge=1, description="judge requests in flight at once")
    timeout_s: float = Field(default=30.0, gt=0, description="per attempt")

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as e:
            raise ValueError(f"judge template is not a str.format template ({e}); write literal braces as {{{{ }}}}") from e
        unknown = fields - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"judge template has unknown fields {sorted(unknown)}; it may use {sorted(TEMPLATE_FIELDS)}")
        if not {"answer", "reference"} <= fields:
            raise ValueError("judge template must contain {answer} and {reference}")
        return template

    @property
    def prompt_sha(self) -> str:
        """Hash of what shapes the judge's prompt (template and system prompt): part of the cache key."""
        return hashlib.sha256(json.dumps([self.system_prompt, self.template]).encode()).hexdigest()[:16]


# ---- verdicts ------------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LABELLED = re.compile(r"judg?e?ment\s*[:=]?\s*\**\s*([A-Za-z01]+)", re.IGNORECASE)
_WORDS = {
    "1": 1.0, "0": 0.0, "yes": 1.0, "no": 0.0, "correct": 1.0, "incorrect": 0.0,
    "true": 1.0, "false": 0.0, "consistent": 1.0, "inconsistent": 0.0,
}


def parse_verdict(reply: str) -> float | None:
    """1.0 / 0.0 from a judge's reply, None when it holds no verdict.

    Reads the last `Judgement: X` (or `Judgment`), X one of 1/0, yes/no, correct/incorrect, true/false;
    without such a label, a reply that is only one of those words. `<think>` blocks are skipped.
    """
    text = _THINK.sub(" ", reply)
    labelled = _LABELLED.findall(text)
    if labelled:
        return _WORDS.get(labelled[-1].lower())
    bare = text.strip().strip(".*'\"` ").lower()
    return _WORDS.get(bare)


# ---- cache ---------------------------------------------------------------------------------------


class JudgeRecord(BaseModel):
    """One cached verdict: its key, what was judged (for people reading the file) and the reply."""

    key: str
    model: str
    prompt_sha: str
    question: str
    answer: str
    reference: str
    verdict: float
    reply: str
    written_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


def judge_key(question: str, answer: str, reference: str, model: str, prompt_sha: str) -> str:
    return hashlib.sha256(json.dumps([question, answer, reference, model, prompt_sha]).encode()).hexdigest()


class JudgeCache:
    """Verdicts by key, in memory and (with a path) in an append-only JSONL file.

    A torn last line (a killed writer) is not read, and is moved aside (`<stem>-<offset>.part` next to
    the file) before the first append; lines are only ever added. One writing process per file.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, JudgeRecord] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None and self.path.exists():
            for line in _jsonl.iter_lines(self.path):
                try:
                    rec = JudgeRecord.model_validate_json(line.data)
                except ValidationError:
                    logger.warning("%s: unreadable line at byte %d skipped", self.path, line.offset)
                    continue
                self._entries[rec.key] = rec

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> JudgeRecord | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, record: JudgeRecord) -> None:
        with self._lock:
            if record.key in self._entries:
                return
            self._entries[record.key] = record
            if self.path is None:
                return
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tail = _jsonl.cut_torn_tail(self.path, keep_dir=self.path.parent)
                if tail is not None:
                    logger.warning("judge cache: %s; kept beside it", tail.describe())
                self._fd = _jsonl.open_append(self.path)
            _jsonl.append_line(self._fd, _jsonl.dumps_line(record))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# ---- the judge -----------------------------------------------------------------------------------


class Judge:
    """Grades (question, answer, reference) triples through a chat model, with the cache in front."""

    def __init__(self, config: JudgeConfig, client: ChatClient | None = None, cache: JudgeCache | None = None):
        self.config = config
        self.client = client or ChatClient(config)
        self.cache = cache if cache is not None else JudgeCache(config.cache_path)
        self.calls = 0  # verdicts asked of the server (cache misses)
        self._calls_lock = threading.Lock()  # grade() runs in a thread pool

    def key(self, question: str, answer: str, reference: str) -> str:
        return judge_key(question, answer, reference, self.config.model, self.config.prompt_sha)

    def grade(self, question: str, answer: str, reference: str) -> float:
        """1.0 or 0.0; raises RewardError when the judge gives no verdict (time-out, down, garbage)."""
        key = self.key(question, answer, reference)
        hit = self.cache.get(key)
        if hit is not None:
            return hit.verdict
        cfg = self.config
        prompt = cfg.template.format(question=question, answer=answer, reference=reference)
        messages = [ChatMessage(role="system", content=cfg.system_prompt), ChatMessage(role="user", content=prompt)]
        with self._calls_lock:
            self.calls += 1
        try:
            reply = self.client.complete(messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens).text
        except APIError as e:
            raise RewardError(f"judge {cfg.model}: {e}") from e
        verdict = parse_verdict(reply)
        if verdict is None:
            raise RewardError(f"judge {cfg.model} gave no verdict: {reply[:200]!r}")
        self.cache.put(JudgeRecord(
            key=key, model=cfg.model, prompt_sha=cfg.prompt_sha, question=question, answer=answer,
            reference=reference, verdict=verdict, reply=reply,
        ))
        return verdict

    def grade_many(self, items: Sequence[tuple[str, str, str]]) -> list[float | RewardError]:
        """Grade each (question, answer, reference); equal triples share one request. Never raises RewardError."""
        by_item: dict[tuple[str, str, str], float | RewardError] = {}
        for item in dict.fromkeys(items):
            hit = self.cache.get(self.key(*item))
            if hit is not None:
                by_item[item] = hit.verdict
        missing = [i for i in dict.fromkeys(items) if i not in by_item]

        def one(item: tuple[str, str, str]) -> float | RewardError:
            try:
                return self.grade(*item)
            except RewardError as e:
                return e

        if len(missing) <= 1 or self.config.workers == 1:
            results = [one(i) for i in missing]
        else:  # threads only for requests: a cached group costs no pool
            with ThreadPoolExecutor(max_workers=min(self.config.workers, len(missing))) as pool:
                results = list(pool.map(one, missing))
        by_item.update(zip(missing, results, strict=True))
        return [by_item[i] for i in items]

    def close(self) -> None:
        self.client.close()
        self.cache.close()


def _reference_text(traj: Trajectory) -> str:
    ref = traj.task.answer
    if ref is None or (isinstance(ref, str) and not ref.strip()):
        raise ValueError(f"task {traj.task.id!r} has no reference answer; an LLM judge needs one")
    if isinstance(ref, list):
        return ", ".join(f"{v:g}" for v in ref)
    return f"{ref:g}" if isinstance(ref, float) else ref


def judge_accuracy(
    config: JudgeConfig | Mapping[str, Any], name: str = "accuracy", weight: float = 1.0, judge: Judge | None = None
) -> RewardFn:
    """A group-scope reward: 1.0 when the judge finds `traj.answer` equivalent to the task's reference.

    `config` may be a mapping (an environment option from YAML). Named `accuracy` by default, so the
    conditional tool bonus and `agent-grpo eval` read it like any accuracy.
    """
    cfg = config if isinstance(config, JudgeConfig) else JudgeConfig.model_validate(dict(config))
    grader = judge or Judge(cfg)

    def judged(group: list[Trajectory]) -> list[float | RewardError]:
        out: list[float | RewardError] = [0.0] * len(group)
        asked: list[int] = []
        items: list[tuple[str, str, str]] = []
        for i, t in enumerate(group):
            answer = (t.answer or "").strip()
            if answer:  # no answer is wrong: nothing to ask
                asked.append(i)
                items.append((t.task.question, answer, _reference_text(t)))
        for i, v in zip(asked, grader.grade_many(items), strict=True):
            out[i] = v
        return out

    judged.__doc__ = judge_accuracy.__doc__
    return reward(name, weight=weight, scope="group")(judged)
