"""Where an expert's weights come from in the precision a plan asks for.

`VariantFactory.build` looks in three places, cheapest first: the in-memory cache of variants no plan
uses right now (LRU, bounded by bytes), the on-disk variant cache (one safetensors file per
(layer, expert, precision, group_size)), and finally the checkpoint itself, quantizing from the
original weights. So switching back and forth between two plans quantizes each variant once.
The `disk` tier reads its experts from the same on-disk files, which therefore hold quantized bytes.
For CPU int4 experts it keeps a second file in the kernel's own packed layout (named by the machine's
layout tag), written with the disk file: repacking the portable codes is most of an int4 load's cost.

Every file carries a content hash (moeqos.executor.integrity) checked on each read. A damaged, truncated
or missing file is never served: it is rebuilt from the checkpoint (counted in `integrity`), or, when
the checkpoint cannot rebuild it either, the read fails with DataLoss.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from moeqos.core.errors import DataLoss, PlanApplyFailed
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.tier import DISK
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.disk_room import check_room
from moeqos.executor.expert_io import ExpertSource
from moeqos.executor.integrity import (
    DamagedFile,
    IntegrityLog,
    VerifiedFiles,
    read_verified,
    save_with_digest,
)
from moeqos.executor.quant import QuantExpert, cpu_kernels
from moeqos.executor.quant.linear import resolve_device
from moeqos.executor.state_store import remove_orphan_temp_files
from moeqos.executor.twin_experts import TwinExperts

log = logging.getLogger(__name__)

ExpertKey = tuple[int, int]
"""(layer, expert)"""
VariantKey = tuple[int, int, Precision, int]
"""(layer, expert, precision, group_size)"""

BIT_PACKED_FORMAT = 2
"""Version of the bit-packed int3/int2 file layout, in their file names: a file of another version is
never read (it is rebuilt from the checkpoint). 2: integer zero points (int8) instead of bf16 zeros."""


def variant_key(plan: Plan, key: ExpertKey) -> VariantKey:
    """The variant `plan` assigns the expert `key` (layer, expert): its precision and the group size it is
    quantized with (the precision's own, else the plan's)."""
    precision = plan[key].precision
    return (key[0], key[1], precision, precision.group(plan.group_size))


class MemoryVariantCache:
    """Host-RAM LRU of built variants not in use, bounded by the bytes they hold.

    Identical experts share one variant object (moeqos.executor.twin_experts), so its bytes count once
    however many keys hold it, and are freed when the last of them goes: counted per key, the default
    model's eight twins per layer charged its 240 int8 experts ~640 MB of a 1 GiB cache for the ~80 MB
    they hold."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[VariantKey, QuantExpert] = OrderedDict()
        self._holders: dict[int, int] = {}
        """id(variant) -> how many entries hold it (the entries keep it alive, so ids stay unique)."""
        self._lock = threading.Lock()

    def take(self, key: VariantKey) -> QuantExpert | None:
        """Remove and return the variant (it is about to be used by a plan)."""
        with self._lock:
            module = self._entries.pop(key, None)
            if module is not None:
                self._release(module)
            return module

    def put(self, key: VariantKey, module: QuantExpert) -> None:
        """Keep a variant a plan stopped using; evicts the least recently kept ones beyond capacity."""
        if module.nbytes() > self.capacity_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._release(self._entries.pop(key))
            self._entries[key] = module
            held = self._holders.get(id(module), 0)
            self._holders[id(module)] = held + 1
            if held == 0:
                self.used_bytes += module.nbytes()
            while self.used_bytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._release(evicted)

    def _release(self, module: QuantExpert) -> None:
        """One entry less holds `module`; its bytes are freed with the last (under the lock)."""
        held = self._holders.pop(id(module)) - 1
        if held:
            self._holders[id(module)] = held
        else:
            self.used_bytes -= module.nbytes()

    def __len__(self) -> int:
        return len(self._entries)


class VariantFactory:
    """Builds experts in a precision from the caches or the checkpoint, and keeps the on-disk files."""

    def __init__(
        self,
        source: ExpertSource,
        shape: tuple[int, int],
        directory: Path,
        memory_cache_bytes: int,
        persist_all: bool,
        quantize_device: str = "cpu",
        keep_in_page_cache: bool = True,
    ) -> None:
        self.source = source
        """The checkpoint's experts (routed and shared slices), read one at a time."""
        self.hidden, self.intermediate = shape
        self.directory = directory
        self.memory = MemoryVariantCache(memory_cache_bytes)
        self.persist_all = persist_all
        """Write every variant built to disk (a configured cache dir), not only the disk tier's."""
        self.quantize_device = quantize_device
        """Where quantization runs: the execution device (an accelerator quantizes far faster than
        the host, whatever tier the result goes to)."""
        self.keep_in_page_cache = keep_in_page_cache
        """False: drop a variant file's pages from the OS page cache after each `load` (see
        ExecutorConfig.disk_reads)."""
        self.quantized = 0
        """Variants quantized from the checkpoint so far (the caches' misses, less identical experts'
        shared variants)."""
        self.twins = TwinExperts(self.read_weights)
        """Identical experts of a layer share one quantization (moeqos.executor.twin_experts)."""
        self.integrity = IntegrityLog()
        """Damaged files found and mended so far."""
        self._verified = VerifiedFiles()
        """Files hashed already (hashed again once anything changes them)."""
        remove_orphan_temp_files(directory)  # left by a writer killed mid-write

    @classmethod
    def for_config(
        cls,
        source: ExpertSource,
        shape: tuple[int, int],
        directory: Path,
        config: ExecutorConfig,
    ) -> VariantFactory:
        """The factory an executor with `config` uses, its variant files in `directory`."""
        return cls(
            source,
            shape,
            directory,
            config.memory_cache_bytes,
            persist_all=config.variant_cache_dir is not None,
            quantize_device=config.device,
            keep_in_page_cache=config.disk_reads == "cached",
        )

    def path(self, key: VariantKey) -> Path:
        layer, expert, precision, group_size = key
        # bit-packed files are named apart from older layouts (int4-layout int3/int2, earlier versions)
        packed = f".b{precision.bits}v{BIT_PACKED_FORMAT}" if precision.is_bit_packed else ""
        return self.directory / f"L{layer}.E{expert}.{precision.value}.g{group_size}{packed}.safetensors"

    def packed_path(self, key: VariantKey, device: str) -> Path | None:
        """Where the variant is kept in this machine's CPU int4 kernel layout, or None where loads build
        the kernel from the portable file (floats and int8, whose portable layout is the kernel's; other
        devices; shapes the CPU op does not take; bit-packed int3/int2, whose kernel keeps them packed)."""
        layer, expert, precision, group_size = key
        if resolve_device(device).type != "cpu" or not precision.is_grouped or precision.is_bit_packed:
            return None
        shapes = ((2 * self.intermediate, self.hidden), (self.hidden, self.intermediate))  # w13, w2
        if not all(cpu_kernels.int4_fits(rows, cols, group_size) for rows, cols in shapes):
            return None
        tag = "".join(cpu_kernels.int4_layout_tag(rows, cols)[:6] for rows, cols in shapes)
        return self.directory / f"L{layer}.E{expert}.{precision.value}.g{group_size}.cpu-{tag}.safetensors"

    def check_experts(self) -> None:
        """Fail at load, not at the first plan that needs it, if any expert tensor is missing or misshapen."""
        self.source.check()

    def read_weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w1 [I, H], w2 [H, I], w3 [I, H]) from the checkpoint, checked for shape."""
        return self.source.read(layer, expert)

    def build(self, key: VariantKey, device: str) -> QuantExpert:
        """The variant on `device`, from memory, the disk cache (its packed file where one was written,
        else the portable one) or the checkpoint (then persisted)."""
        module = self.memory.take(key)
        if module is not None:
            return module.to_device(device)
        packed = self.packed_path(key, device)
        if packed is not None and packed.is_file():  # written ahead: no repacking of the portable codes
            try:
                return QuantExpert.from_packed_state(self.read_state(packed), key[2], key[3])
            except DamagedFile as error:
                self._discard(error)
        if self.path(key).is_file():
            try:
                return self._read_portable(key, device)
            except DamagedFile as error:
                self._discard(error)
        module = self._quantize(key, device)
        if self.persist_all:
            try:
                self._save(key, module)
            except OSError as exc:  # a full or failing cache disk: a RAM-tier expert does not need the file
                log.warning("variant %s not kept on disk: %s", self.path(key).name, exc.strerror)
        return module

    def check_room(self, keys: list[VariantKey], device: str) -> None:
        """OverBudget unless the disk-tier files `ensure_file` would write for `keys` fit on the cache's
        filesystem now (measured at each call, so other writers and RAM-tier files count)."""
        check_room(self.directory, self.new_file_bytes(keys, device), "the plan's disk tier")

    def new_file_bytes(self, keys: Sequence[VariantKey], device: str) -> int:
        """Bytes `ensure_file(key, device)` would write for `keys`: the files not on disk yet."""
        needed = 0
        for key in keys:
            size = expert_bytes(self.hidden, self.intermediate, key[2], key[3])
            if not self.path(key).is_file():
                needed += size
            packed = self.packed_path(key, device)
            if packed is not None and not packed.is_file():
                needed += size
        return needed

    def ensure_file(self, key: VariantKey, device: str | None = None, remember: bool = True) -> Path:
        """Make sure the on-disk variant exists (the `disk` tier's backing store), and, given the
        `device` that will load it, its packed file where one applies, so no miss writes a file.
        `remember=False` (variants built ahead) leaves the memory cache as it was: its entries are the
        variants recent plans used, the cheapest switch back."""
        path = self.path(key)
        module = None
        if not path.is_file():
            module = (self.memory.take(key) if remember else None) or self._quantize(key, "cpu")
            self._save(key, module)
            if remember:
                self.memory.put(key, module.to_device("cpu"))
        if device is None:
            return path
        loading: str = device  # a name of its own: the lambda below sees it as a str
        packed = self.packed_path(key, loading)
        if packed is not None and not packed.is_file():
            if module is None:
                try:
                    module = self._read_portable(key, "cpu")
                except DamagedFile as error:
                    self._discard(error)
                    module = self._rebuild(key)
            twin = self._twin_file(key, module, lambda k: self.packed_path(k, loading))
            if twin is None or not self._link(twin, packed):
                state = module.packed_state()
                if state is not None:
                    self._write(packed, state)
        return path

    def load(self, key: VariantKey, device: str) -> tuple[QuantExpert, int]:
        """Read the on-disk variant onto `device` (from its packed file when `ensure_file` wrote one);
        returns it and the bytes read. A damaged or missing file is rebuilt from the checkpoint and
        rewritten (0 bytes read); DataLoss when the checkpoint cannot rebuild it."""
        packed = self.packed_path(key, device)
        if packed is not None and packed.is_file():
            try:
                state = self.read_state(packed)
                return QuantExpert.from_packed_state(state, key[2], key[3]), _size(packed, state)
            except DamagedFile as error:
                self._discard(error)
        try:
            path = self.path(key)
            state = self.read_state(path)
            return QuantExpert.from_state(state, key[2], key[3], device), _size(path, state)
        except DamagedFile as error:
            self._discard(error)
        module = self._rebuild(key)
        if packed is not None and (packed_state := module.packed_state()) is not None:
            try:
                self._write(packed, packed_state)
            except OSError as exc:  # served from the rebuilt module all the same
                log.warning("packed variant %s not rewritten: %s", packed.name, exc.strerror)
        return module.to_device(device), 0

    def read_state(self, path: Path) -> dict[str, torch.Tensor]:
        """Every tensor of a variant file, in memory of its own, checked against the file's content
        hash (DamagedFile when it is missing, unreadable or does not match)."""
        # read whole here, not as page faults inside the first matmul, and so the slot owns its memory
        # rather than pinning the file's page-cache pages
        state = read_verified(path, self._verified)
        if not self.keep_in_page_cache:
            _drop_from_page_cache(path)
        return state

    def _read_portable(self, key: VariantKey, device: str) -> QuantExpert:
        return QuantExpert.from_state(self.read_state(self.path(key)), key[2], key[3], device)

    def _discard(self, error: DamagedFile) -> None:
        """Count a damaged file and remove it, so the next read rebuilds it rather than tripping again."""
        self.integrity.damaged(error)
        error.path.unlink(missing_ok=True)

    def _rebuild(self, key: VariantKey) -> QuantExpert:
        """Quantize the variant again from the checkpoint and rewrite its file (on the host).

        DataLoss when the checkpoint cannot give the weights; a failed write is counted and the
        rebuilt module served anyway (its output is right; the next miss rebuilds again)."""
        layer, expert, precision, _ = key
        name = f"expert L{layer}.E{expert} ({precision.value})"
        try:
            module = self._quantize(key, "cpu")
        except Exception as exc:
            message = f"{name}: its variant file is damaged and the checkpoint cannot rebuild it ({exc})"
            self.integrity.failed(message)
            raise DataLoss(message) from exc
        try:
            self._save(key, module)
        except OSError as exc:
            self.integrity.failed(f"{name}: rebuilt, but its file could not be rewritten ({exc.strerror})")
        else:
            self.integrity.mended()
        return module

    def retire(self, key: VariantKey, module: QuantExpert) -> None:
        """A plan stopped using this variant: keep it in host RAM for a later switch back."""
        self.memory.put(key, module.to_device("cpu"))

    def _quantize(self, key: VariantKey, device: str) -> QuantExpert:
        layer, expert, precision, group_size = key
        twin = self.twins.known(layer, expert, precision, group_size)
        if twin is not None:  # an expert proved identical before: its variant, nothing read
            return twin.to_device(device)
        weights = self.read_weights(layer, expert)
        twin = self.twins.find(layer, expert, precision, group_size, weights)
        if twin is not None:  # an identical expert's variant: the same codes, quantized once
            return twin.to_device(device)
        w1, w2, w3 = (w.to(self.quantize_device) for w in weights)
        self.quantized += 1
        module = QuantExpert.from_weights(w1, w2, w3, precision, group_size=group_size, device=device)
        self.twins.remember(layer, expert, precision, group_size, weights, module)
        return module

    def _save(self, key: VariantKey, module: QuantExpert) -> None:
        """Write `module`'s portable file, or hard-link its twin's when `module` is a twin's variant
        (moeqos.executor.twin_experts): the same bytes, without converting and hashing them again (on
        the default model 3.9 s of the 6.2 s an all-int4 build took went to writing its 240 files)."""
        path = self.path(key)
        twin = self._twin_file(key, module, self.path)
        if twin is None or not self._link(twin, path):
            self._write(path, module.to_state())

    def _twin_file(
        self, key: VariantKey, module: QuantExpert, path_of: Callable[[VariantKey], Path | None]
    ) -> Path | None:
        """`path_of` the expert whose variant `module` is when that is another expert (a twin's
        shared variant), else None."""
        layer, expert, precision, group_size = key
        origin = self.twins.origin(layer, precision, group_size, module)
        return None if origin in (None, expert) else path_of((layer, origin, precision, group_size))

    def _link(self, source: Path, path: Path) -> bool:
        """Hard-link `source` as `path`, atomically; False (nothing done) unless `source` is a file
        this cache verified and nothing changed since, or when the filesystem refuses the link.

        A link shares the inode: damage to one twin's file shows in the others, and each is found and
        rebuilt on its own read (a rebuild writes a new file in place of the link)."""
        if not self._verified.current(source):
            return False
        tmp = _temp_path(path)
        try:
            os.link(source, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        self._verified.remember(source)  # a link moves the inode's ctime: both names are that checked file
        self._verified.remember(path)
        return True

    def _write(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """Write atomically (temp file + rename) so a crash never leaves a truncated variant."""
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
        tmp = _temp_path(path)
        try:
            save_with_digest(state, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
            raise
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # durable before the rename; clean pages can leave the page cache
        os.replace(tmp, path)
        self._verified.remember(path)  # written from `state` just now: its first read need not hash it
        if not self.keep_in_page_cache:
            _drop_from_page_cache(path)  # the first read goes to the device like every later one


def _size(path: Path, state: dict[str, torch.Tensor]) -> int:
    """The bytes a read of `path` moved (its tensors' bytes if it vanished since the read)."""
    try:
        return path.stat().st_size
    except OSError:
        return sum(t.numel() * t.element_size() for t in state.values())


def _temp_path(path: Path) -> Path:
    """This thread's temporary name beside `path`, renamed onto it when complete (a crash leaves a temp
    file, which `remove_orphan_temp_files` clears at the next start, never a truncated variant)."""
    return path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")


def _drop_from_page_cache(path: Path) -> None:
    """Ask the OS to forget `path`'s cached pages (a no-op where posix_fadvise does not exist)."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # removed since it was read: nothing cached to drop
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def build_changed(
    factory: VariantFactory,
    plan: Plan,
    changed: Sequence[ExpertKey],
    device: str,
    progress: Callable[[str, float], None] | None = None,
) -> dict[ExpertKey, QuantExpert]:
    """The modules of the `changed` experts as `plan` assigns them (disk experts: their files written,
    no module), reporting `apply_plan` progress. If one fails nothing is kept: DataLoss stays DataLoss
    (a damaged file the checkpoint cannot rebuild: the caller must see DATA_LOSS, not a retryable
    ABORTED), anything else becomes PlanApplyFailed."""
    built: dict[ExpertKey, QuantExpert] = {}
    for done, key in enumerate(changed):
        assignment = plan[key]
        variant = variant_key(plan, key)
        try:
            if assignment.tier == DISK:
                factory.ensure_file(variant, device)
            else:
                built[key] = factory.build(variant, assignment.tier)
        except Exception as exc:
            built.clear()
            failed = DataLoss if isinstance(exc, DataLoss) else PlanApplyFailed
            raise failed(
                f"building expert L{key[0]}.E{key[1]} as {assignment} failed ({exc}); "
                "the previous plan is still serving"
            ) from exc
        if progress is not None:
            progress("apply_plan", (done + 1) / len(changed))
    return built
