"""The per-run controller: edits attention layer by layer and blends latents step by step.

One `EditRun` exists per sampling run and owns everything that changes during it (the current step,
the local-blend maps and masks). The host adapter calls it from its attention patches with a
`LayerCall` telling which batch rows hold the source and the edits, and with `attend`, the host's
own attention function, which computes every row the run does not change.

Batch rows: the latent batch is [source, edit 1, ..., edit N]; the host runs the conditional and the
unconditional branches in chunks of that size. Only the conditional rows of the edits are changed;
the unconditional branch and the source are never edited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import apply_probabilities, mix_cross, probabilities
from .capture import SELF_MAX_TOKENS, AttentionCapture
from .joint import (
    MAP_ELEMENTS,
    attention_with_lse,
    fused_lse_agrees,
    heads_first,
    keep_mask,
    keep_tokens,
    put_tokens,
    row_mask,
    row_runs,
    spread_tokens,
    text_map,
)
from .local_blend import SOURCE, SUBTRACT_SOURCE, BlendMaps, blend
from .schedule import step_of_sigma, steps_at
from .spec import EditBatch

__all__ = ["LayerCall", "JointCall", "EditRun", "Attend", "JointAttend"]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# the host's joint attention over some rows: (q, k, v, the host's mask for those rows or None) -> output
JointAttend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class LayerCall:
    """Where the source and the edits sit in one attention call, and the layer's geometry."""

    source_row: int
    edit_rows: tuple[int, ...]  # one row per edit, in batch order
    heads: int
    spatial: tuple[int, int]  # (h, w) grid of the queries
    downsample: int  # latent size / layer size (1 = full resolution)
    block: str = ""  # "input", "middle" or "output": where the layer sits in the UNet
    layer: object = None  # the layer's identity (the host's patch key), for counting captured layers


@dataclass(frozen=True)
class JointCall:
    """Where the source and the edits sit in one joint (MM-DiT) attention call: text tokens first, then image."""

    source_row: int
    edit_rows: tuple[int, ...]  # one row per edit, in batch order
    text_tokens: int  # T: the image tokens start here on the token axis
    heads: int
    spatial: tuple[int, int]  # (h, w) grid of the image tokens
    token_axis: int = 2  # q, k are [R, H, T + I, d] (Flux) or [R, T + I, H * d] (SD3, axis 1)
    layer: object = None  # the block's identity; None: the order of the call in its evaluation


@dataclass(frozen=True, eq=False)
class _EditTensors:
    weights: torch.Tensor  # [Ls, Le]
    own: torch.Tensor  # [Le]
    equalizer: torch.Tensor  # [Le]
    alphas: torch.Tensor  # [num_steps, Le]


class EditRun:
    def __init__(self, batch: EditBatch, num_steps: int, blend_downsample: int | None = None,
                 capture: AttentionCapture | None = None, blend_layers: frozenset | None = None):
        """blend_downsample: the UNet resolution local blend takes its maps from; blend_layers: the joint blocks
        (`JointCall.layer`) it takes them from on an MM-DiT, None for every block."""
        self.batch = batch
        self.num_steps = max(num_steps, 1)
        self.blend_downsample = blend_downsample
        self.blend_layers = blend_layers
        self.capture = capture  # optional: aggregates attention maps for viewing
        self.step = 0
        # (kind, layer) seen in this evaluation: a node that runs the model a second time within an evaluation
        # (PerturbedAttentionGuidance's perturbed pass) gets its edits injected, but adds nothing to the maps.
        self._mapped: set = set()
        self._joint_calls = 0  # joint attention calls so far in this evaluation
        self._fused_lse: dict[tuple[torch.device, torch.dtype], bool] = {}  # see `joint.fused_lse_agrees`
        self._alphas = [e.cross_alphas(self.num_steps) for e in batch.edits]  # [num_steps, Le] each
        # Decided on the CPU up front so that no layer call waits on the device to ask.
        self._cross_on = [[bool(a[s].any()) for s in range(self.num_steps)] for a in self._alphas]
        self._self_on = [[e.self_window.contains(s, self.num_steps) for s in range(self.num_steps)]
                         for e in batch.edits]
        self.blend_maps = [BlendMaps(e.local_blend) if e.local_blend is not None else None for e in batch.edits]
        self._blend_start = [
            e.local_blend.start if e.local_blend is not None else None for e in batch.edits
        ]
        self.masks: list[torch.Tensor | None] = [None] * len(batch.edits)
        self._tensors: dict[tuple[int, torch.device], _EditTensors] = {}

    # -- steps ---------------------------------------------------------------------------------

    def begin_evaluation(self, sigma: float, sample_sigmas: list[float]) -> int:
        """Called once per model evaluation, before the UNet runs."""
        self.step = step_of_sigma(sigma, sample_sigmas)
        self._mapped.clear()
        self._joint_calls = 0
        return self.step

    # -- attention -----------------------------------------------------------------------------

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: LayerCall, attend: Attend
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """q [R, Nq, H*d], k and v [R, T, H*d] -> (output [R, Nq, H*d], rows changed)."""
        step = self.step
        first = self._first_call("cross", call)
        blend_layer = first and call.downsample == self.blend_downsample
        viewing = first and self.capture is not None and self.capture.wants(step, call.downsample, call.block)
        todo = [
            e
            for e in range(len(self.batch.edits))
            if self._cross_on[e][step] or (blend_layer and self.blend_maps[e] is not None) or viewing
        ]
        out, trimmed = self._attend_own_tokens(q, k, v, call, attend)
        if not todo:
            return out, trimmed
        heads, src = call.heads, call.source_row
        # A row's first `length` keys are its prompt; later ones repeat or pad it (see _attend_own_tokens).
        source_len = self.batch.source.length
        source_map = probabilities(q[src], k[src, :source_len], heads)  # [H, Nq, Ls]
        if viewing:
            self.capture.add_cross(0, step, source_map, call.spatial, call.layer)
        changed = set(trimmed)
        for e in todo:
            row = call.edit_rows[e]
            edit = self.batch.edits[e]
            edit_map = probabilities(q[row], k[row, : edit.target.length], heads)  # [H, Nq, Le]
            if self._cross_on[e][step]:
                t = self._edit_tensors(e, q.device)
                edit_map = mix_cross(source_map, edit_map, t.weights, t.own, t.alphas[step], t.equalizer)
                out[row] = apply_probabilities(edit_map, v[row], heads)
                changed.add(row)
            if blend_layer and self.blend_maps[e] is not None:
                self._capture_blend(e, source_map, edit_map, call.spatial)
            if viewing:
                self.capture.add_cross(e + 1, step, edit_map, call.spatial, call.layer)
        return out, tuple(sorted(changed))

    def _attend_own_tokens(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: LayerCall, attend: Attend
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The host's attention for every row, each prompt row over its own tokens only.

        Prompts of different lengths share one context tensor: each is padded to the longest by repeating
        it. Where its length divides the context's, attention over the repeats is exactly attention over
        the prompt (each key's weight is split over its copies), and the host computes it as a stock run
        does. Where it does not, the padding would tilt the weights, so those rows attend over their first
        `length` keys. Returns (output [R, Nq, H*d], the rows computed that way).
        """
        total = k.shape[1]
        lengths = {call.source_row: self.batch.source.length}
        lengths.update({row: e.target.length for row, e in zip(call.edit_rows, self.batch.edits, strict=True)})
        trimmed = {row: n for row, n in lengths.items() if total % n}
        if not trimmed:
            return attend(q, k, v), ()
        groups = [[r for r in range(q.shape[0]) if r not in trimmed]]  # rows over the whole context
        groups += [[r for r, m in trimmed.items() if m == n] for n in sorted(set(trimmed.values()))]
        out = None
        for rows in groups:
            if not rows:
                continue
            n = trimmed.get(rows[0], total)
            part = attend(q[rows], k[rows, :n], v[rows, :n])  # [len(rows), Nq, H*d]
            out = part.new_empty((q.shape[0], *part.shape[1:])) if out is None else out
            out[rows] = part
        assert out is not None  # trimmed rows exist, so one group is not empty
        return out, tuple(sorted(trimmed))

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: LayerCall, attend: Attend
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Inject the source's self-attention map into the edits without materialising it.

        softmax(q_src k_src^T) v_edit is exactly "copy the source's map, apply it to the edit's
        values", so the host's memory-efficient attention computes it with the edit rows' queries
        and keys swapped for the source's.
        """
        step = self.step
        rows = tuple(
            call.edit_rows[e]
            for e, edit in enumerate(self.batch.edits)
            if self._self_on[e][step] and call.downsample >= edit.self_min_downsample
        )
        viewing = (self._first_call("self", call) and self.capture is not None and self.capture.spec.self_attention
                   and self.capture.wants(step, call.downsample, call.block))
        if rows:
            injected_q, injected_k = q.clone(), k.clone()
            injected_q[list(rows)] = q[call.source_row]
            injected_k[list(rows)] = k[call.source_row]
            q, k = injected_q, injected_k
        if viewing:  # the maps in effect: an injected edit row shows the source's map
            for item, row in enumerate((call.source_row, *call.edit_rows)):
                self.capture.add_self(item, probabilities(q[row], k[row], call.heads))
        return attend(q, k, v), rows

    def joint_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: JointCall, attend: JointAttend,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """MM-DiT joint attention, q, k, v [R, H, T + I, d] or [R, T + I, H * d] (v may be [R, T + I, H, d]), `mask`
        the host's attention mask or None -> (output in attend's layout, rows changed).

        Structure is kept as Shin et al. (ICCV 2025) keep it on MM-DiTs: inside an edit's self window its image
        queries and keys are the source's, while its text tokens and all its values stay its own, so the image-to-
        image part of its map is the source's. Inside its cross window the image-to-text part is edited as a UNet's
        cross-attention map (see `joint`); those rows are computed by PyTorch's fused attention, every other row by
        `attend` (the host's attention). No [I, I] map is materialised; the [H, I, T] image-to-text maps are, a
        group of heads at a time.
        """
        step = self.step
        self._joint_calls += 1
        if call.layer is None:
            call = dataclasses.replace(call, layer=("joint", self._joint_calls))
        t, axis, total = call.text_tokens, call.token_axis, q.shape[0]
        image = (slice(None),) * (axis - 1) + (slice(t, None),)
        injected = [call.edit_rows[e] for e in range(len(self.batch.edits)) if self._self_on[e][step]]

        def with_source_image(x: torch.Tensor, run: slice = slice(None)) -> torch.Tensor:
            """x[run] (a view), or a copy whose injected rows have the source's image tokens."""
            part, start = x[run], run.start or 0
            mine = [r - start for r in injected if start <= r < start + part.shape[0]]
            if not mine:
                return part
            part = part.clone()
            part[(mine, *image)] = x[(call.source_row, *image)]
            return part

        first = self._first_call("joint", call)
        own = self._own_text(call)
        cross = [e for e in range(len(self.batch.edits)) if own and self._cross_on[e][step]]
        blending = (first and bool(own) and any(m is not None for m in self.blend_maps)
                    and (self.blend_layers is None or call.layer in self.blend_layers))
        viewing = first and bool(own) and self.capture is not None and self.capture.wants_step(step)
        if not (cross or blending or viewing) and all(n == t for n in own.values()):
            return attend(with_source_image(q), with_source_image(k), v, mask), tuple(injected)
        cross_rows = [call.edit_rows[e] for e in cross]
        lengths = [own.get(r, t) for r in range(total)]
        out = None
        # the host's attention, each row over its own prompt; contiguous rows as views of the batch, not copies
        for run in row_runs([r for r in range(total) if r not in cross_rows], lengths):
            n = lengths[run.start]
            part = attend(*(keep_tokens(x, n, t, axis) for x in (with_source_image(q, run), with_source_image(k, run),
                                                                   v[run])),
                          keep_mask(row_mask(mask, list(range(run.start, run.stop)), total), n, t))
            part = spread_tokens(part, n, t, 2 if part.ndim == 4 else 1)
            out = part.new_empty((total, *part.shape[1:])) if out is None else out
            out[run] = part
        assert out is not None  # the source row is always the host's
        del part  # before the edited rows' tensors exist
        qh, kh, vh = (heads_first(x, axis, call.heads) for x in (q, k, v))  # [R, H, L, d] views
        fused: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # cross row -> its image rows ([H, I, d], [H, I])
        kernel = (q.device, q.dtype)
        if cross_rows and kernel not in self._fused_lse:
            self._fused_lse[kernel] = fused_lse_agrees(*kernel)
        for r in cross_rows:
            n, image_row = lengths[r], call.source_row if r in injected else r
            keys = torch.cat([kh[r, :, :n], kh[image_row, :, t:]], dim=1)[None]  # [1, H, n + I, d]
            values = keep_tokens(vh[r : r + 1], n, t, 2)
            row_mask_ = keep_mask(row_mask(mask, [r], total), n, t)
            text_out, _ = attention_with_lse(qh[r : r + 1, :, :n], keys, values,
                                             None if row_mask_ is None else row_mask_[..., :n, :],
                                             fused=self._fused_lse[kernel])
            image_out, lse = attention_with_lse(qh[image_row : image_row + 1, :, t:], keys, values,
                                                None if row_mask_ is None else row_mask_[..., n:, :],
                                                fused=self._fused_lse[kernel])
            put_tokens(out, r, 0, n, text_out[0])
            put_tokens(out, r, n, t, None)
            fused[r] = (image_out[0], lse[0])
        self._edit_joint_rows(qh, kh, vh, call, own, set(injected), cross, fused,
                              row_mask(mask, list(range(total)), total), blending=blending,
                              capture=self.capture if viewing else None)
        for r, (image_out, _) in fused.items():
            put_tokens(out, r, t, t + image_out.shape[1], image_out)
        return out, tuple(sorted({*injected, *cross_rows}))

    def _own_text(self, call: JointCall) -> dict[int, int]:
        """{row: its prompt's length} for the source and edit rows, or {} when the prompts' tokens are not the call's
        text tokens (a text encoder layout the adapter does not read): then no word is edited."""
        lengths = {call.source_row: self.batch.source.length}
        lengths.update((row, e.target.length) for row, e in zip(call.edit_rows, self.batch.edits, strict=True))
        return lengths if max(lengths.values()) == call.text_tokens else {}

    def _edit_joint_rows(self, qh, kh, vh, call: JointCall, own: dict[int, int], injected: set[int], cross: list[int],
                         fused: dict[int, tuple[torch.Tensor, torch.Tensor]], mask, *, blending: bool,
                         capture: AttentionCapture | None) -> None:
        """Edits the cross edits' fused image rows (`fused`, in place) and feeds the capture (when
        given) and the local-blend maps, a group of heads at a time. qh, kh, vh [R, H, L, d] as the model made them
        (an `injected` row's image queries and keys are the source row's); own: each row's prompt length; mask
        additive [R or 1, H or 1, L, L] or None."""
        t, step = call.text_tokens, self.step
        heads, image = qh.shape[1], qh.shape[2] - call.text_tokens
        rows = (call.source_row, *call.edit_rows)  # per item
        summed = capture is not None or blending
        sums: list[torch.Tensor] = []  # per item [I, L_item]: its map in effect, summed over heads
        group = max(1, MAP_ELEMENTS // max(1, image * t))  # heads per group
        for lo in range(0, heads, group):
            hs = slice(lo, lo + group)
            maps = [text_map(qh, kh, mask, rows[0], rows[0], hs, t, own[rows[0]])[1]]  # [h, I, L_item] each
            for e, row in enumerate(call.edit_rows):
                if e not in cross and not summed:
                    continue
                image_row = call.source_row if row in injected else row
                scores, mine = text_map(qh, kh, mask, image_row, row, hs, t, own[row])
                if e in cross:
                    tensors = self._edit_tensors(e, qh.device)
                    edited = mix_cross(maps[0], mine, tensors.weights, tensors.own, tensors.alphas[step],
                                       tensors.equalizer)  # [h, I, L_edit]
                    n, (o, lse) = own[row], fused[row]
                    # the share of the joint softmax the text gets: [h, I, 1]
                    mass = torch.exp(torch.logsumexp(scores, dim=-1, keepdim=True) - lse[hs, :, None])
                    change = torch.matmul(mass * (edited - mine), vh[row, hs, :n].float())  # [h, I, d]
                    o[hs] = (o[hs].float() + change).to(o.dtype)
                    mine = edited
                maps.append(mine)
            if summed:
                sums = [m.sum(0) for m in maps] if not sums else [a + m.sum(0) for a, m in zip(sums, maps, strict=True)]
        for item, total in enumerate(sums):
            if capture is not None:
                capture.add_cross(item, step, (total / heads)[None], call.spatial, call.layer)  # the head mean
            if blending and item and self.blend_maps[item - 1] is not None:
                self._capture_blend(item - 1, sums[0][None], total[None], call.spatial)
        if capture is not None and capture.spec.self_attention and image <= SELF_MAX_TOKENS:
            for item, row in enumerate(rows):  # the image-to-image map in effect (an injected edit: the source's)
                image_row = call.source_row if row in injected else row
                total = torch.zeros(image, image, device=qh.device)
                for h in range(heads):  # one [I, I] map at a time
                    scores = torch.matmul(qh[image_row, h, t:].float(), kh[image_row, h, t:].float().transpose(-1, -2))
                    total += torch.softmax(scores * qh.shape[-1] ** -0.5, dim=-1)
                capture.add_self(item, (total / heads)[None])  # the head mean

    def _first_call(self, kind: str, call: LayerCall | JointCall) -> bool:
        """Whether this layer is called for the first time in this evaluation (and note that it was)."""
        key = (kind, call.layer)
        if key in self._mapped:
            return False
        self._mapped.add(key)
        return True

    # -- local blend ---------------------------------------------------------------------------

    def _capture_blend(self, e: int, source_map: torch.Tensor, edit_map: torch.Tensor, spatial: tuple[int, int]):
        maps = self.blend_maps[e]
        if maps is None:
            return
        for side, positions in maps.positions().items():
            probs = source_map if side in (SOURCE, SUBTRACT_SOURCE) else edit_map
            amount = probs[:, :, list(positions)].sum(dim=(0, 2))  # [Nq]
            maps.add(side, amount.reshape(spatial))

    def _blending(self, e: int) -> bool:
        start = self._blend_start[e]
        return start is not None and self.step >= steps_at(start, self.num_steps)

    def blend_state(self, x: torch.Tensor, source: torch.Tensor | None = None) -> None:
        """In place, on the sampler's own latent x [1+N, C, H, W] as a model evaluation begins: each blended
        edit is reset to the source (`source` [C, H, W], default x[0]) outside its mask (the mask of the
        previous blended evaluation). This is the public code's reset after every step: the sampler goes
        on from the reset latent, so a pixel that joins the mask later starts from the source's latent."""
        for e, mask in enumerate(self.masks):
            if mask is not None:
                x[e + 1] = blend(x[0] if source is None else source, x[e + 1], mask.to(x.device))

    def blend_output(self, denoised: torch.Tensor) -> torch.Tensor:
        """Update the masks from the maps seen so far and blend the model's prediction with them, so that
        outside the mask the edit's step is the source's step, also in samplers that keep a history of
        predictions (dpmpp_2m, lms, ...)."""
        out = None
        for e, maps in enumerate(self.blend_maps):
            if maps is None or not self._blending(e):
                continue
            mask = maps.mask((denoised.shape[-2], denoised.shape[-1]))
            if mask is None:
                continue
            mask = self.masks[e] = mask.to(denoised.device)
            out = denoised.clone() if out is None else out
            out[e + 1] = blend(denoised[0], denoised[e + 1], mask)
        return denoised if out is None else out

    def blend_final(self, latent: torch.Tensor) -> torch.Tensor:
        """The sampler's result, with each blended edit equal to the source outside its last mask."""
        latent = latent.clone()
        self.blend_state(latent)
        return latent

    # -- device tensors ------------------------------------------------------------------------

    def _edit_tensors(self, e: int, device: torch.device) -> _EditTensors:
        key = (e, device)
        if key not in self._tensors:
            edit = self.batch.edits[e]
            self._tensors[key] = _EditTensors(
                weights=edit.mapping.weights.to(device),
                own=edit.mapping.own.to(device),
                equalizer=edit.equalizer().to(device),
                alphas=self._alphas[e].to(device),
            )
        return self._tensors[key]
