"""The text that follows the VoCo block: prompts from the checkpoint's chat template."""

from __future__ import annotations

from vococli.errors import UserError
from vococli.families.base import VocoModel


def render_prompt(model: VocoModel, messages: list[dict], generation_prompt: bool = True) -> str:
    """The conversation `messages` as the checkpoint's chat template writes it."""
    tok = model.tokenizer
    if not tok.chat_template:
        raise UserError(f"{model.path}: the tokenizer has no chat template")
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if messages and messages[-1]["content"] and messages[-1]["content"] not in text:
        # templates such as llava-hf's render only typed content parts
        typed = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        text = tok.apply_chat_template(typed, tokenize=False, add_generation_prompt=generation_prompt)
        if messages[-1]["content"] not in text:
            raise UserError(f"{model.path}: the chat template does not render the message text")
    return text


def prompt_length(model: VocoModel, question: str) -> int:
    """Tokens of a single-turn prompt for `question`."""
    text = render_prompt(model, [{"role": "user", "content": question}])
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
