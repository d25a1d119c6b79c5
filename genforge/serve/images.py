"""POST /v1/images/generations for the image families: the class as the prompt, `n`, `size` (the
model's own), `seed`, and the family's options (steps, guidance, ...) as extra fields. Images come
back as base64 PNGs (`b64_json`); genforge hosts no files, so `url` is refused."""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genforge.labels import label_png
from genforge.models import SampleRequest, item_seeds
from genforge.serve.context import bound, family_extras, generate_items, options, provenance, seed_of, served, state
from genforge.serve.errors import APIError
from genforge.serve.feedback import image_generations, new_id, record
from genforge.serve.models import Served
from genforge.serve.moderation import check_prompt
from genforge.serve.protocol import ImageRequest

router = APIRouter()


def _png(chw: Any, current: Served, generation_id: str) -> str:
    """A labelled PNG (watermark, metadata, C2PA when configured): the raw sample plus the mark of its id."""
    png = label_png(chw.transpose(1, 2, 0), current.name, current.version, generation_id).png
    return base64.b64encode(png).decode("ascii")


@router.post("/v1/images/generations")
async def generate_images(req: ImageRequest, request: Request) -> Any:
    st, started = state(request), time.perf_counter()
    current = served(request, req.model, "image")
    req = req.model_copy(update={"prompt": check_prompt(request, req.prompt, "prompt")})
    spec = current.model.spec
    bound(req.n, st.config.limits.max_images, "n", "max_images")
    if req.response_format != "b64_json":
        raise APIError(400, "response_format must be b64_json: genforge returns images in the response and hosts "
                            "no files", param="response_format", code="invalid_value")
    size = f"{spec.width}x{spec.height}"
    if req.size not in (None, size):
        raise APIError(400, f"size {req.size!r} is not one this model makes; it makes {size}", param="size",
                       code="invalid_value")
    classes = list(spec.classes)
    if classes:
        prompt = req.prompt.strip()
        if prompt and prompt not in classes:
            raise APIError(400, f"prompt {prompt[:60]!r} is not a class of this model; its classes: {classes}",
                           param="prompt", code="unknown_class")
        labels = tuple([classes.index(prompt)] * req.n if prompt else [i % len(classes) for i in range(req.n)])
    else:
        if req.prompt.strip():
            raise APIError(400, "this model is unconditional: leave prompt empty", param="prompt",
                           code="invalid_value")
        labels = None
    chosen = family_extras(request, current, req.extras())
    options(current, chosen)  # validated now, so a bad option is this request's 400, not its batch's failure
    sample = SampleRequest(item_seeds(seed_of(req.seed), req.n), labels, options=chosen)
    samples, current = await generate_items(request, current, sample, "images")
    names = [classes[y] if classes else "" for y in (samples.labels or [None] * len(samples))]
    ids = [new_id("img") for _ in names]
    data = [{"b64_json": _png(img, current, gid), "revised_prompt": name, "generation_id": gid}
            for img, name, gid in zip(samples.images, names, ids)]
    await record(request, current, image_generations(req, data))
    return JSONResponse({"created": int(time.time()), "model": current.name,
                         "provenance": provenance(current, watermark="genforge-wm/1 (genforge verify FILE)",
                                                  metadata="PNG iTXt genforge:ai_generated"),
                         "system_fingerprint": current.fingerprint, "data": data,
                         "usage": {"images": len(data), "seconds": round(time.perf_counter() - started, 3)}},
                        headers={"x-genforge-model-version": current.fingerprint})
