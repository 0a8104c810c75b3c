"""A tiny hand-made instance: two restaurants, three orders, two couriers, 100 m per minute."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = {
    "restaurants.txt": "restaurant\tx\ty\nr1\t0\t0\nr2\t1000\t0\n",
    # o1, o2 at r1 (ready 10, 12), east of it; o3 at r2.
    "orders.txt": ("order\tx\ty\tplacement_time\trestaurant\tready_time\n"
                   "o1\t500\t0\t0\tr1\t10\no2\t600\t0\t2\tr1\t12\no3\t1000\t500\t5\tr2\t20\n"),
    "couriers.txt": "courier\tx\ty\ton_time\toff_time\nc1\t0\t300\t0\t60\nc2\t1000\t1000\t0\t60\n",
    "instance_parameters.txt": ("meters_per_minute\tpickup service minutes\tdropoff service minutes\t"
                                "target click-to-door\tmaximum click-to-door\tpay per order\t"
                                "guaranteed pay per hour\n100\t4\t4\t40\t90\t10\t15\n"),
}


def write_instance(directory: Path, files: dict[str, str] | None = None, **overrides: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in {**TINY, **(files or {}), **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_instance(tmp_path / "tiny")
