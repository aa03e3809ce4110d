"""Talking to a trained policy: one episode with a free-text instruction (``vlafoundry run``).

:func:`unknown_words` says which words of an instruction the policy's tokenizer cannot represent (a word-level
tokenizer trained on the demonstrations maps every new word to ``[UNK]``; MiniLM's WordPiece almost never does), so a
caller can report them instead of letting them be silently mangled. :func:`run_instruction` plays one episode in
which the policy sees the given instruction (the environment keeps its own mission, which decides success) and
records the frames for a GIF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Episode", "TokenReport", "run_instruction", "unknown_words"]

_WORDS = re.compile(r"[\w']+|[^\w\s]")


@dataclass
class TokenReport:
    """What the policy's tokenizer makes of an instruction's words."""

    tokenizer: str  # "word-level (18 tokens)", "MiniLM WordPiece", "none"
    words: list[str]
    unknown: list[str]

    def message(self) -> str:
        if self.tokenizer == "none":
            return "this policy has no language input: the instruction is ignored"
        if not self.unknown:
            return f"all {len(self.words)} words known to this policy's tokenizer ({self.tokenizer})"
        return (f"{len(self.unknown)} of {len(self.words)} words unknown to this policy's tokenizer "
                f"({self.tokenizer}), seen as [UNK]: {', '.join(self.unknown)}")  # fmt: skip


def _split(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if re.match(r"\w", w)]


def unknown_words(policy: Any, text: str) -> TokenReport:
    """The words of ``text`` that the policy's tokenizer turns into its unknown token (punctuation is ignored)."""
    words = _split(text)
    processor = getattr(policy, "processor", None)
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:  # a TextTokenizer trained on the instructions (model.language scratch)
        unk = tok.unk_id
        unknown = [w for w in dict.fromkeys(words) if unk in tok.encode([w])[0][0].tolist()]
        return TokenReport(f"{tok.kind}-level, {tok.vocab_size} tokens", words, unknown)
    encoder = getattr(policy, "text_encoder", None)
    hf = getattr(encoder, "tokenizer", None)
    if hf is not None:  # a pretrained LanguageEncoder's HuggingFace tokenizer
        unk = hf.unk_token_id
        unknown = [w for w in dict.fromkeys(words)
                   if unk in hf(w, add_special_tokens=False)["input_ids"]]  # fmt: skip
        return TokenReport(f"pretrained {type(hf).__name__}, {hf.vocab_size} tokens", words, unknown)
    if getattr(getattr(policy, "cfg", None), "language", None) == "none":
        return TokenReport("none", words, [])
    return TokenReport("unknown", words, [])


@dataclass
class Episode:
    """One played episode."""

    env: str
    seed: int
    mission: str  # the environment's own mission (decides success)
    instruction: str  # what the policy was told
    success: bool
    steps: int
    total_return: float
    frames: list[np.ndarray] = field(default_factory=list)

    def outcome(self) -> str:
        verdict = "success" if self.success else "failure"
        return (f"{verdict} in {self.steps} steps (return {self.total_return:.3f}) on {self.env} seed {self.seed}: "
                f"told \u201c{self.instruction}\u201d, the env's mission was \u201c{self.mission}\u201d")  # fmt: skip


def observation_batch(obs: dict[str, Any], instruction: str, task: str) -> dict[str, Any]:
    """One env observation as a batch of one for ``policy.select_action``, the policy told ``instruction``."""
    batch: dict[str, Any] = {"state": np.asarray(obs["state"], dtype=np.float32)[None],
                             "instruction": [instruction], "instruction_present": np.array([True]),
                             "state_present": np.array([True]), "task": [task]}  # fmt: skip
    if obs.get("image") is not None:
        batch["image"] = np.asarray(obs["image"])[None]
        batch["image_present"] = np.array([True])
    return batch


def run_instruction(policy: Any, env_name: str, instruction: str, *, seed: int = 0,
                    env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None,
                    frames: bool = True) -> Episode:  # fmt: skip
    """Play one episode of ``env_name`` from ``seed``; the policy sees ``instruction`` at every step.

    Stops at the env's success (Meta-World episodes go on after it otherwise), termination, truncation or
    ``max_steps`` (default: the env's own limit). ``frames``: record ``render_rgb`` frames for a GIF.
    """
    from vlafoundry.envs import get_family, make_env

    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction: expected non-empty text, got {instruction!r}")
    family = get_family(env_name)
    env = make_env(env_name, **dict(env_kwargs or {}))
    try:
        obs = env.reset(seed=int(seed))
        mission = str(obs["instruction"])
        cap = int(max_steps or env.spec.max_episode_steps)
        shots: list[np.ndarray] = []
        if frames:
            first = family.render_rgb(env)
            if first is not None:
                shots.append(np.asarray(first))
        policy.reset()
        success, steps, ret = False, 0, 0.0
        while steps < cap:
            action = np.asarray(policy.select_action(observation_batch(obs, instruction, env_name)))[0]
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
            ret += float(reward)
            if shots:
                shots.append(np.asarray(family.render_rgb(env)))
            if bool(info.get("success", False)):
                success = True
            if success or terminated or truncated:
                break
        return Episode(env_name, int(seed), mission, instruction, success, steps, ret, shots)
    finally:
        env.close()
