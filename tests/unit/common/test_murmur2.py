import pytest

from tests.murmur2 import java_partition, murmur2


# Vectors from Apache Kafka's UtilsTest (the Java client's own expectations).
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_java_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_java_partition_is_in_range_and_stable() -> None:
    parts = [java_partition(f"req-{i}".encode(), 6) for i in range(200)]
    assert set(parts) == set(range(6))
    assert parts == [java_partition(f"req-{i}".encode(), 6) for i in range(200)]
