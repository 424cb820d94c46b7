"""Names vulture finds unused in the relay's code that are kept on purpose, each with why.

`vulture` (scripts/test.sh, `[tool.vulture]` in pyproject.toml) reads this file among the
sources; nothing runs it. mypy checks it, so an entry cannot outlive the name it keeps.
"""

import logging

import onnxruntime

from asr_tts.segmenter import Segmenter
from asr_tts.tts.cache import FrameCache
from asr_tts.tts.kokoro import KokoroTTS
from protocol.errors import CloseCode

# The close codes of docs/protocol.md §1.7, named in one place: aiohttp itself closes with 1009
# for a frame over max_msg_size; 1008 and 1011 are documented as reserved.
CloseCode.TOO_BIG
CloseCode.POLICY
CloseCode.INTERNAL

# Read by the tests: whether the segmenter is inside an utterance, and the frame cache's
# counters (its docstring says metrics read them; no metric exports them yet).
Segmenter.in_speech
FrameCache(max_bytes=0).hits
FrameCache(max_bytes=0).misses
FrameCache(max_bytes=0).evictions

# Set for onnxruntime, which reads them when it builds the VAD session (asr_tts/vad.py).
onnxruntime.SessionOptions.intra_op_num_threads
onnxruntime.SessionOptions.inter_op_num_threads
onnxruntime.SessionOptions.log_severity_level

# bench.kokoro_call sets these on the sessions it compares and profiles.
onnxruntime.SessionOptions.graph_optimization_level
onnxruntime.SessionOptions.enable_profiling
onnxruntime.SessionOptions.profile_file_prefix

# Read by logging.Formatter.formatMessage when the format names %(asctime)s (relay/logsafe.py).
logging.LogRecord.asctime

# Read by the licence test: the modules a Kokoro worker imported (no GPL phonemiser).
KokoroTTS.loaded_modules

# Read by the logging module when it makes a record (relay/logs.py, configure).
logging._srcfile
logging.logThreads
logging.logProcesses
logging.logMultiprocessing
