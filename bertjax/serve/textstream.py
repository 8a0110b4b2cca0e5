"""Generated tokens -> text deltas, with stop strings (cut before them, as OpenAI and TGI do).

The text of the new tokens is decoded whole at each token (a byte-level BPE token may end in
the middle of a UTF-8 character, which a per-token decode would garble) and the part not yet
released is handed out, except what could still change: a trailing replacement character (an
unfinished character) and a suffix that is the start of a stop string. So a streamed text never
shows the beginning of a stop string that then completes, and the deltas concatenate to the
final text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_UNFINISHED = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class TextStream:
    """Text of a generation token by token; `stopped` once a stop string appeared.

    Args:
      decode: token ids -> text (special tokens skipped).
      stop: strings that end the generation; the text is cut before the first one.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._full = ""
        self.released = 0  # characters handed out so far
        self.stopped = False
        self.text = ""  # the final text once stopped or finished

    def push(self, token_id: int) -> str:
        """Adds a token; returns the text it releases (maybe "")."""
        if self.stopped:
            raise RuntimeError("the text already stopped")
        self._ids.append(int(token_id))
        self._full = self._decode(self._ids)
        hits = [i for s in self._stop if (i := self._full.find(s)) >= 0]
        if hits:
            self.stopped = True
            self.text = self._full[: min(hits)]
            return self._release(len(self.text))
        return self._release(self._safe_end())

    def finish(self) -> str:
        """Ends the text (end of text or length): releases whatever was held back."""
        if not self.stopped:
            self.text = self._full
        return self._release(len(self.text))

    def _safe_end(self) -> int:
        end = len(self._full.rstrip(_UNFINISHED))
        text = self._full[:end]
        for s in self._stop:
            # The longest suffix of the text that a stop string starts with is held back.
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    end = min(end, len(text) - k)
                    break
        return end

    def _release(self, end: int) -> str:
        if end <= self.released:
            return ""
        delta = self._full[self.released : end]
        self.released = end
        return delta
