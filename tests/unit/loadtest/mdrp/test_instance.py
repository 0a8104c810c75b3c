"""loadtest/mdrp/instance.py: the set's files read and checked; hostile files refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.mdrp.instance import InvalidInstance, read_instance
from tests.unit.loadtest.mdrp.conftest import TINY, write_instance

DATA = Path("/work/shared/data/mdrp/0o50t100s1p100")
ORDERS_HEAD = "order\tx\ty\tplacement_time\trestaurant\tready_time\n"
PARAMS_HEAD = TINY["instance_parameters.txt"].splitlines()[0] + "\n"


def test_the_tiny_instance_reads(tiny_dir: Path):
    inst = read_instance(tiny_dir)
    assert [o.id for o in inst.orders] == ["o1", "o2", "o3"]
    assert inst.order("o2").ready_at == 12 and inst.order("o2").restaurant == "r1"
    assert inst.courier("c2").off_at == 60
    assert inst.params.metres_per_minute == 100 and inst.params.pickup_service_min == 4
    assert inst.location("r2") == (1000, 0) and inst.location("c1") == (0, 300)


@pytest.mark.skipif(not DATA.is_dir(), reason="the shared MDRP data set is not on this machine")
def test_a_real_instance_reads():
    inst = read_instance(DATA)
    assert (len(inst.orders), len(inst.couriers), len(inst.restaurants)) == (252, 61, 93)
    assert inst.params.target_click_to_door_min == 40


def order_line(line: str) -> dict[str, str]:
    return {"orders.txt": ORDERS_HEAD + line}


@pytest.mark.parametrize("files, reason, where", [
    (order_line("o1\t500\t0\t0\tr1\n"), "missing_field", "orders.txt:2:ready_time"),
    (order_line("o1\t500\t0\t0\tr1\t10\t99\n"), "unexpected_field", "orders.txt:2"),
    (order_line("o1\tnan\t0\t0\tr1\t10\n"), "not_finite", "orders.txt:2:x"),
    (order_line("o1\t-inf\t0\t0\tr1\t10\n"), "not_finite", "orders.txt:2:x"),
    (order_line("o1\t1e999\t0\t0\tr1\t10\n"), "out_of_range", "orders.txt:2:x"),
    (order_line("o1\t1_000\t0\t0\tr1\t10\n"), "wrong_type", "orders.txt:2:x"),
    (order_line("o1\t0x10\t0\t0\tr1\t10\n"), "wrong_type", "orders.txt:2:x"),
    (order_line("o1\t500\t\t0\tr1\t10\n"), "missing_field", "orders.txt:2:y"),
    (order_line("o1\t500\t0\t1.5\tr1\t10\n"), "wrong_type", "orders.txt:2:placement_time"),
    (order_line("o1\t500\t0\t-3\tr1\t10\n"), "out_of_range", "orders.txt:2:placement_time"),
    (order_line("o1\t500\t0\t99999999\tr1\t10\n"), "out_of_range", "orders.txt:2:placement_time"),
    (order_line("o1\t500\t0\t20\tr1\t10\n"), "out_of_range", "orders.txt:2:ready_time"),
    (order_line("o1\t500\t0\t0\tr9\t10\n"), "not_found", "orders.txt:2:restaurant"),
    (order_line("o 1\t500\t0\t0\tr1\t10\n"), "bad_format", "orders.txt:2:order"),
    (order_line("0\t500\t0\t0\tr1\t10\n"), "bad_format", "orders.txt:2:order"),
    (order_line("o1\t500\t0\t0\tr1\t10\no1\t5\t0\t0\tr1\t10\n"), "duplicate", "orders.txt:3:order"),
    (order_line("r1\t500\t0\t0\tr1\t10\n"), "duplicate", "orders.txt:2:order"),      # a restaurant's id
    (order_line(""), "empty", "orders.txt"),
    ({"orders.txt": "order,x,y\no1,1,2\n"}, "bad_format", "orders.txt:1"),
    ({"orders.txt": ""}, "empty", "orders.txt:1"),
    ({"couriers.txt": "courier\tx\ty\ton_time\toff_time\nc1\t0\t0\t60\t60\n"}, "out_of_range", "couriers.txt:2:off_time"),
    ({"instance_parameters.txt": PARAMS_HEAD + "0\t4\t4\t40\t90\t10\t15\n"}, "out_of_range",
     "instance_parameters.txt:2:meters_per_minute"),
    ({"instance_parameters.txt": PARAMS_HEAD + "100\t0\t4\t40\t90\t10\t15\n"}, "out_of_range",
     "instance_parameters.txt:2:pickup service minutes"),
    ({"instance_parameters.txt": PARAMS_HEAD + "100\t4\t4\t40\t30\t10\t15\n"}, "out_of_range",
     "instance_parameters.txt:2:maximum click-to-door"),
    ({"instance_parameters.txt": PARAMS_HEAD + "100\t4\t4\t40\t90\t10\t15\n100\t4\t4\t40\t90\t10\t15\n"},
     "too_many", "instance_parameters.txt:3"),
])
def test_hostile_files_are_refused_naming_file_line_and_field(tmp_path: Path, files, reason, where):
    directory = write_instance(tmp_path / "bad", files)
    with pytest.raises(InvalidInstance) as caught:
        read_instance(directory)
    assert caught.value.reason == reason
    assert caught.value.field == where
    assert where in str(caught.value)


def test_binary_and_nul_and_missing_files_are_refused(tmp_path: Path):
    directory = write_instance(tmp_path / "bin")
    (directory / "restaurants.txt").write_bytes(b"restaurant\tx\ty\n\xff\xfe\t1\t2\n")
    with pytest.raises(InvalidInstance) as caught:
        read_instance(directory)
    assert (caught.value.reason, caught.value.field) == ("invalid_text", "restaurants.txt")
    (directory / "restaurants.txt").write_text("restaurant\tx\ty\nr\x001\t1\t2\n")
    with pytest.raises(InvalidInstance, match="NUL"):
        read_instance(directory)
    (directory / "restaurants.txt").unlink()
    with pytest.raises(InvalidInstance) as caught:
        read_instance(directory)
    assert (caught.value.reason, caught.value.field) == ("not_found", "restaurants.txt")
    with pytest.raises(InvalidInstance) as caught:
        read_instance(tmp_path / "nowhere")
    assert caught.value.reason == "not_found"


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch):
    import loadtest.mdrp.instance as module

    monkeypatch.setattr(module, "MAX_FILE_BYTES", 100)
    directory = write_instance(tmp_path / "big", order_line("o1\t500\t0\t0\tr1\t10\n" * 10))
    with pytest.raises(InvalidInstance) as caught:
        read_instance(directory)
    assert (caught.value.reason, caught.value.field) == ("too_large", "orders.txt")
