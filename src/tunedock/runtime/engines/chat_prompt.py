"""The plain chat prompt used for models whose tokenizer has no chat template.

Each message becomes one line ``"<role>: <content>\\n"``, in order, and the prompt
ends with ``"assistant:"`` so the model writes the assistant's reply next::

    system: You convert dates to ISO 8601.
    user: 3rd of May 2021
    assistant:

Seq2seq models get the same text as their encoder input. The reply is the generated
text as is: nothing is stripped from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunedock.runtime.engines.base import ChatMessage

ASSISTANT_PREFIX = "assistant:"


def render_plain_chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """Render ``messages`` in the plain template described in this module's docstring."""
    lines = [f"{message.role}: {message.content}\n" for message in messages]
    return "".join(lines) + ASSISTANT_PREFIX
