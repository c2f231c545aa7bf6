"""Continuous batching: one decode step computes the next token of every active stream.

Legend for shape comments: B streams in the batch, C prompt tokens in one prefill chunk, V vocabulary.

A step (`BatchScheduler.step`, the one place a served decode step happens) runs under the model's
exclusive context, so a plan switch lands between two steps and applies to every stream at once:
1. streams cancelled (or abandoned by their reader) since the last step finish, leaving the batch;
2. waiting streams are admitted while the batch has room (`max_batch` streams, `max_tokens` KV tokens
   reserved: prompt + max_tokens of each);
3. the oldest admitted streams whose prompts fit one chunk together read them in one forward pass,
   take their first tokens and join the batch (moeqos.executor.batch_prefill,
   moeqos.executor.batch_cache); a prompt longer than a chunk is read alone, one chunk per step, into
   its own KV cache, so a long prompt costs the others one chunk per step instead of stalling them;
4. one forward pass [B, 1] gives every batch row its next token, each stream sampling with its own
   parameters and generator and finishing on its own stop conditions (moeqos.executor.batch_stream).
In the MoE blocks each expert runs once per step on every token routed to it (a disk-tier expert is
loaded once per step, not once per stream).

No thread of its own: the reader of a stream that needs an event and finds none runs the next step
itself unless another reader is running one (then it waits for that step), so steps happen exactly as
fast as some stream is read, and a lone request runs on its caller's thread as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import torch
from moeqos.core.errors import OverBudget
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.batch_cache import BatchCache
from moeqos.executor.batch_prefill import PrefillModel, prefill_together
from moeqos.executor.batch_stream import Phase, Stream
from moeqos.executor.config import BatchLimits
from moeqos.executor.kv_cache import KvCache
from moeqos.executor.sampling import SamplingParams

__all__ = ["BatchModel", "BatchScheduler"]


class BatchModel(PrefillModel, Protocol):
    """What the scheduler needs from the runtime: locked forward passes (PrefillModel's) and a
    step-long exclusive hold."""

    def exclusive(self) -> AbstractContextManager[None]: ...


class BatchScheduler:
    """Streams join between steps, decode together, and leave between steps."""

    def __init__(
        self, model: BatchModel, device: str, limits: BatchLimits, plan_spec: Callable[[], str]
    ) -> None:
        self.limits = limits
        self._model = model
        self._device = device
        self._plan_spec = plan_spec
        """Names the plan in force (read under the exclusive hold when a stream finishes)."""
        self._cond = threading.Condition()
        """Guards `_waiting` and `_stepping`; notified after every step."""
        self._stepping = False
        self._waiting: list[Stream] = []
        self._admitted: list[Stream] = []
        """Prefilling streams, oldest first (touched by the stepping thread only)."""
        self._batch: list[Stream] = []
        """The decoding streams, one per row of `_cache` (touched by the stepping thread only)."""
        self._cache = BatchCache()

    # ----- what GetInfo reports -----------------------------------------------------------------
    @property
    def active(self) -> int:
        """Streams prefilling or decoding now."""
        return len(self._admitted) + len(self._batch)

    @property
    def tokens_in_flight(self) -> int:
        """KV tokens reserved by the active streams."""
        return sum(s.tokens_reserved for s in (*self._admitted, *self._batch))

    # ----- streams ------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        eos_ids: set[int],
        decode: Callable[[list[int]], str] | None,
        cancel: threading.Event | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Queue a generation; its events (one per token, then one with statistics) as it is read.
        OverBudget at once when its prompt plus max_tokens exceed the tokens in flight allowed.
        `on_step(index, seconds)` hears each of its tokens (moeqos.executor.batch_stream.Stream)."""
        stream = Stream(prompt_ids, params, eos_ids, decode, cancel, on_step)
        if stream.tokens_reserved > self.limits.max_tokens:
            raise OverBudget(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceed "
                f"the {self.limits.max_tokens} tokens in flight this executor allows"
            )
        with self._cond:
            self._waiting.append(stream)
        return self._events(stream)

    def _events(self, stream: Stream) -> Iterator[GenerationEvent]:
        try:
            while True:
                event = self._next(stream)
                yield event
                if event.stats is not None:
                    return
        finally:
            stream.abandoned = True  # a reader gone before the end cancels its stream at the next step

    def _next(self, stream: Stream) -> GenerationEvent:
        """The stream's next event: already computed, or after the step this thread or another runs."""
        while True:
            with self._cond:
                while not stream.events and self._stepping:
                    self._cond.wait()
                if stream.events:
                    item = stream.events.popleft()
                    if isinstance(item, BaseException):
                        raise item
                    return item
                self._stepping = True
            self._stepped(self.step)

    def tidy(self) -> None:
        """Finish the cancelled streams now, between two steps, so their places and KV tokens are free
        at once rather than at the next step (which only a reader's demand runs)."""
        with self._cond:
            while self._stepping:
                self._cond.wait()
            self._stepping = True
        self._stepped(self._drop_cancelled)

    def _stepped(self, work: Callable[[], None]) -> None:
        """Run `work` holding the stepping role (taken by the caller), then hand the role back."""
        try:
            with self._model.exclusive():
                work()
        finally:
            with self._cond:
                self._stepping = False
                self._cond.notify_all()

    # ----- the step -----------------------------------------------------------------------------
    def step(self) -> None:
        """One scheduler step (see the module docstring); a failure fails the streams it computed.
        Called by a stream's reader holding the stepping role, or directly when nothing reads."""
        with self._model.exclusive():
            self._drop_cancelled()
            self._admit()
            try:
                self._prefill_chunk()
                self._decode()
            except Exception as error:  # the forward pass failed: every stream in it learns why
                for stream in (*self._admitted, *self._batch):
                    stream.fail(error)
                self._admitted, self._batch, self._cache = [], [], BatchCache()
                return
            self._leave()

    def _drop_cancelled(self) -> None:
        with self._cond:
            waiting, self._waiting = self._waiting, [s for s in self._waiting if not s.cancelled]
        for stream in (*waiting, *self._admitted, *self._batch):
            if stream.cancelled and stream.phase is not Phase.DONE:
                stream.finish("cancelled", self._plan_spec)
        self._admitted = [s for s in self._admitted if s.phase is not Phase.DONE]
        self._leave()

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and self._fits(self._waiting[0]):
                stream = self._waiting.pop(0)
                stream.phase = Phase.PREFILLING
                self._admitted.append(stream)

    def _fits(self, stream: Stream) -> bool:
        if self.active >= self.limits.max_batch:
            return False
        return self.tokens_in_flight + stream.tokens_reserved <= self.limits.max_tokens

    def _prefill_chunk(self) -> None:
        """The admitted streams whose prompts fit one chunk together are read in one pass
        (moeqos.executor.batch_prefill) and join the batch; else one chunk of the oldest one's prompt."""
        if not self._admitted:
            return
        group = self._prefill_group()
        if not group:
            self._prefill_long(self._admitted[0])
            return
        logits, cache, lengths = prefill_together(
            self._model, [s.prompt_ids for s in group], self._device
        )  # [A, V]
        rows = logits.to("cpu", torch.float32)  # [A, V]: one copy off the device
        for stream, row in zip(group, rows, strict=True):
            stream.read = len(stream.prompt_ids)
            stream.take(row, self._plan_spec)  # row: [V]
        del self._admitted[: len(group)]
        joining = [i for i, s in enumerate(group) if s.phase is not Phase.DONE]  # done on a first token
        if not joining:
            return
        lengths = [lengths[i] for i in joining]
        if len(joining) < len(group):
            cache.keep_rows(joining, cache.width - max(lengths))
        self._cache.join(cache, lengths)
        for i in joining:
            group[i].phase = Phase.DECODING
            self._batch.append(group[i])

    def _prefill_group(self) -> list[Stream]:
        """The oldest admitted streams not begun whose prompts, padded to the longest, fit one chunk
        together (empty when the oldest has begun or its prompt alone needs more than one chunk)."""
        group: list[Stream] = []
        for stream in self._admitted:
            width = max([len(stream.prompt_ids), *(len(s.prompt_ids) for s in group)])
            if stream.read or (len(group) + 1) * width > self.limits.prefill_chunk:
                break
            group.append(stream)
        return group

    def _prefill_long(self, stream: Stream) -> None:
        """One chunk of a prompt longer than a chunk, in the stream's own KV cache; its first token and
        its row once read."""
        if stream.cache is None:
            stream.cache = KvCache()
        chunk = stream.prompt_ids[stream.read : stream.read + self.limits.prefill_chunk]
        logits = self._model.forward_logits(torch.tensor([chunk]), stream.cache, keep=1)  # [1, 1, V]
        stream.read += len(chunk)
        if stream.read < len(stream.prompt_ids):
            return
        self._admitted.pop(0)
        stream.take(logits[0, -1], self._plan_spec)
        if stream.phase is Phase.DONE:  # finished on its first token: never joins the batch
            return
        stream.phase = Phase.DECODING
        self._cache.join(stream.cache)
        stream.cache = None
        self._batch.append(stream)

    def _decode(self) -> None:
        """One token for every batch row, from one forward pass."""
        if not self._batch:
            return
        tokens = torch.tensor([[s.last_token] for s in self._batch])  # [B, 1]
        mask, positions = self._cache.step_inputs(self._device)  # [B, W + 1] or None, [B, 1]
        logits = self._model.forward_logits(
            tokens, self._cache.cache, keep=1, attention_mask=mask, position_ids=positions
        )  # [B, 1, V]
        self._cache.advanced()
        rows = logits[:, -1].to("cpu", torch.float32)  # [B, V]: one copy off the device per step
        for stream, row in zip(self._batch, rows, strict=True):
            stream.take(row, self._plan_spec)  # row: [V]

    def _leave(self) -> None:
        """Finished streams leave the batch (their rows and the columns nobody uses any more)."""
        rows = [i for i, s in enumerate(self._batch) if s.phase is not Phase.DONE]
        if len(rows) < len(self._batch):
            self._cache.keep(rows)
            self._batch = [self._batch[i] for i in rows]
