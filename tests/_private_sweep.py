"""One sweep on the private local cluster, shared by three end-to-end tests.

The CLI starts its own Ray (no ``RAY_ADDRESS``), trains the T1s_Ss student with two DDP
workers, and writes into an S3 bucket (moto's server on 127.0.0.1) named with its key pair in
the URI, with the reference sweep's teachers put in the bucket beforehand. Each test checks its
own part of the same run:

- tests/test_ddp.py: the 2-worker student equals the reference's 1-worker student;
- tests/test_loopback.py: every listening socket of the sweep's processes, sampled while the
  DDP run trains, is on loopback (torch.distributed's store and gloo included);
- tests/test_credentials.py: the key pair reaches no object in the bucket, no file of Ray's
  session and none of the CLI's output.

One Ray start-up and one Train run instead of three of each (the suite's time is mostly Ray
start-up); what is compared, sampled and scanned is what each test checked on a run of its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
from _s3_helpers import FOREIGN_AWS_ENV, KEY, SECRET, moto_server, s3_filesystem
from _sweep_helpers import (
    cli_env,
    kd_ray_cmd,
    kill_processes_under,
    listening_sockets,
    processes_under,
    ray_tmpdir,
    uninterrupted_run,
    write_config,
)

BUCKET = "kdbucket"
PREFIX = f"{BUCKET}/runs"
TRIAL = "synthetic-T1s_Ss-kd-full-s0"


@dataclass(frozen=True)
class PrivateSweep:
    returncode: int
    stdout: str
    stderr: str
    objects: dict[str, bytes]  # every object in the bucket after the sweep, by key
    results: Path  # a local copy of the bucket's results root (``PREFIX``)
    ray_files: Path  # a copy of every regular file of the private cluster's temp dir
    listeners: frozenset[tuple[int, str, str, int]]  # (pid, command, address, port)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@functools.cache
def private_sweep() -> PrivateSweep:
    """The shared run (once per test process; see the module docstring)."""
    import pyarrow.fs as pafs

    reference = uninterrupted_run()
    root = Path(tempfile.mkdtemp(prefix="kd_private_"))
    ray_tmp = ray_tmpdir()
    env = cli_env(ray_tmp)
    for var in FOREIGN_AWS_ENV:
        env.pop(var, None)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    listeners: set[tuple[int, str, str, int]] = set()
    with moto_server() as endpoint:
        s3 = s3_filesystem(endpoint)
        s3.create_dir(BUCKET)
        for teacher in (reference / "_teachers").glob("*.*"):
            with s3.open_output_stream(f"{PREFIX}/_teachers/{teacher.name}") as out:
                out.write(teacher.read_bytes())
        uri = f"s3://{KEY}:{quote(SECRET, safe='')}@{PREFIX}?endpoint_override={endpoint}&scheme=http"
        # In the config file, the harder case: the config itself travels into Tune's params.
        config = write_config(
            root,
            {
                "grid": {"permutations": ["T1s_Ss"]},
                "results": uri,
                "resources": {"num_workers": 2, "cpus_per_worker": 0.95},
            },
        )
        with open(root / "stdout", "w") as out, open(root / "stderr", "w") as err:
            proc = subprocess.Popen(
                kd_ray_cmd("sweep", str(config), "--no-report"),
                stdout=out,
                stderr=err,
                env=env,
                cwd=Path(__file__).resolve().parents[1],
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 900
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(psutil.Error):
                    driver = psutil.Process(proc.pid)
                    listeners |= listening_sockets(
                        [driver, *driver.children(recursive=True), *processes_under(ray_tmp)]
                    )
                time.sleep(0.3)
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            kill_processes_under(ray_tmp)
        objects = {
            info.path: s3.open_input_stream(info.path).read()
            for info in s3.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
            if info.type == pafs.FileType.File
        }
    for key, data in objects.items():
        if key.startswith(PREFIX + "/"):
            local = root / "results" / key[len(PREFIX) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
    ray_files = root / "ray_files"
    for folder, _, files in os.walk(ray_tmp):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path) or name.endswith(".sock"):
                continue
            copy = ray_files / os.path.relpath(path, ray_tmp)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return PrivateSweep(
        returncode=returncode,
        stdout=(root / "stdout").read_text(),
        stderr=(root / "stderr").read_text(),
        objects=objects,
        results=root / "results",
        ray_files=ray_files,
        listeners=frozenset(listeners),
    )
