import io

import pytest
from PIL import Image

from gateway.catalog import Catalog
from gateway.exceptions import InvalidRequest, PayloadTooLarge
from gateway.settings import PROJECT_ROOT
from gateway.types import ImageFormat, InputImage, Mode
from gateway.validation import build_request, decode_images, parse_params

MODEL = Catalog.from_yaml(PROJECT_ROOT / "config" / "models.yaml").models[0]
BASE = {"model": "flux.2-klein-4b", "prompt": "a fox"}


def _png(width: int = 8, height: int = 8, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, fmt)
    return out.getvalue()


def _params(**fields: object):
    return parse_params({**BASE, **fields}, max_prompt_chars=100)


def test_defaults() -> None:
    params = _params()
    assert (params.n, params.size, params.response_format, params.output_format) == (1, None, "url", ImageFormat.PNG)
    request = build_request(params, MODEL, Mode.GENERATE, request_id="r")
    assert request.size == (1024, 1024)


def test_form_strings_are_parsed() -> None:
    params = _params(n="3", seed="42", size="512x768", output_format="jpg")
    assert (params.n, params.seed, params.size, params.output_format) == (3, 42, (512, 768), ImageFormat.JPEG)


def test_unknown_fields_are_ignored() -> None:
    assert _params(quality="hd", style="vivid", background="auto").prompt == "a fox"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 101}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"model": None}, "model"),
        ({"n": 0}, "n"),
        ({"n": "two"}, "n"),
        ({"n": True}, "n"),
        ({"n": 1.5}, "n"),
        ({"size": "big"}, "size"),
        ({"response_format": "base64"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"seed": -1}, "seed"),
        ({"stream": True}, "stream"),
    ],
)
def test_bad_fields_name_their_param(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _params(**fields)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"n": 5}, "n"), ({"size": "63x512"}, "size"), ({"size": "2049x1024"}, "size")],
)
def test_model_limits(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_request(_params(**fields), MODEL, Mode.GENERATE, request_id="r")
    assert info.value.param == param


def test_edit_needs_images_and_refuses_masks_and_too_many() -> None:
    image = InputImage(b"x", ImageFormat.PNG, 8, 8)
    with pytest.raises(InvalidRequest, match="at least one"):
        build_request(_params(), MODEL, Mode.EDIT, request_id="r")
    with pytest.raises(InvalidRequest, match="does not support 'mask'"):
        build_request(_params(), MODEL, Mode.EDIT, request_id="r", images=[image], has_mask=True)
    with pytest.raises(InvalidRequest, match="at most 4"):
        build_request(_params(), MODEL, Mode.EDIT, request_id="r", images=[image] * 5)


async def test_decode_images_checks_real_image_data() -> None:
    images = await decode_images(
        [("image", _png(16, 8)), ("image", _png(4, 4, "JPEG")), ("image", _png(2, 2, "WEBP"))],
        max_file_bytes=10**6,
        max_total_bytes=10**6,
        max_pixels=10**6,
    )
    assert [(i.format, i.width, i.height) for i in images] == [
        (ImageFormat.PNG, 16, 8),
        (ImageFormat.JPEG, 4, 4),
        (ImageFormat.WEBP, 2, 2),
    ]


@pytest.mark.parametrize(
    "data",
    [b"not an image", _png()[:40], _png(fmt="GIF"), b""],
    ids=["garbage", "truncated", "gif", "empty"],
)
async def test_decode_images_refuses_non_images(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        await decode_images([("image", data)], max_file_bytes=10**6, max_total_bytes=10**6, max_pixels=10**6)
    assert info.value.status_code == 400 and info.value.param == "image"


async def test_decode_images_refuses_decompression_bombs_before_decoding() -> None:
    with pytest.raises(InvalidRequest, match="pixels"):
        await decode_images(
            [("image", _png(2000, 2000))], max_file_bytes=10**7, max_total_bytes=10**7, max_pixels=10**6
        )


async def test_decode_images_caps_sizes() -> None:
    with pytest.raises(PayloadTooLarge):
        await decode_images([("image", _png())], max_file_bytes=10, max_total_bytes=10**6, max_pixels=10**6)
    with pytest.raises(PayloadTooLarge):
        await decode_images(
            [("image", _png())] * 3, max_file_bytes=10**6, max_total_bytes=len(_png()) * 2, max_pixels=10**6
        )
