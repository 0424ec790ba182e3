from fractions import Fraction

from gateway.sizes import FreeSizes, SizeOption, TableSizes, nearest_sizes

TABLE = TableSizes(
    (
        SizeOption(1024, 1024, Fraction(1), {"aspect_ratio": "1:1"}),
        SizeOption(1360, 768, Fraction(1), {"aspect_ratio": "16:9"}),
        SizeOption(1456, 1456, Fraction(2), {"aspect_ratio": "1:1"}),
    )
)


def test_free_sizes_bounds_and_grid() -> None:
    free = FreeSizes(64, 2048, multiple_of=16)
    assert free.supports(1024, 768)
    assert not free.supports(1000, 768)
    assert not free.supports(32, 64)
    assert not free.supports(4096, 64)
    assert free.nearest(1000, 770) == (1008, 768)
    assert free.nearest(5000, 10) == (2048, 64)


def test_free_sizes_pixel_cap_scales_down_within_the_cap() -> None:
    free = FreeSizes(64, 4096, multiple_of=16, max_pixels=4_194_304)
    w, h = free.nearest(4096, 4096)
    assert w * h <= 4_194_304 and w == h


def test_table_sizes_are_exact() -> None:
    assert TABLE.supports(1360, 768)
    assert not TABLE.supports(1365, 768)
    assert TABLE.params_for(1360, 768) == {"aspect_ratio": "16:9"}
    assert TABLE.nominal_megapixels(1456, 1456) == 2


def test_table_nearest_prefers_the_same_shape() -> None:
    assert TABLE.nearest(1920, 1080) == (1360, 768)
    assert TABLE.nearest(1500, 1500) == (1456, 1456)


def test_nearest_sizes_merges_capabilities_best_first() -> None:
    free = FreeSizes(64, 2048, multiple_of=16)
    assert nearest_sizes([TABLE, free], 1000, 1000) == [(1008, 1008), (1024, 1024)]
