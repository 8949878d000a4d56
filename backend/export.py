"""A conversation as a Markdown document (the JSON export is the API's own ConversationDetail)."""

from __future__ import annotations

from backend.schemas import ConversationDetail

UNTITLED = "Untitled conversation"


def to_markdown(conversation: ConversationDetail) -> str:
    lines = [f"# {conversation.title or UNTITLED}", ""]
    about = f"Exported from NanoPrime · created {conversation.created_at:%Y-%m-%d %H:%M} UTC"
    if conversation.model:
        about += f" · model {conversation.model}"
    lines += [f"*{about}*", ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for message in conversation.messages:
        heading = "User" if message.role == "user" else "Assistant"
        if message.role == "assistant" and message.status != "complete":
            heading += f" ({message.status})"
        lines += [f"## {heading}", ""]
        if message.thinking:
            lines += ["<details><summary>Thinking</summary>", "", message.thinking, "", "</details>", ""]
        lines += [message.content, ""]
    return "\n".join(lines)
