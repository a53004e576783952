"""Every string the page shows, in English and Chinese, so a translation is one file to review.

`t(lang, key, **fields)` formats one string. Engine and server messages (errors, "busy") come from
below the UI and stay as they are. The per-answer stats line keeps the English wording of
`TurnStats.summary()` so tools that read pages (bench/load.py) parse either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LANG_NAMES = {"en": "English", "zh": "中文"}

TEXT: dict[str, dict[str, str]] = {
    # page
    "loading": {"en": "Loading the model…", "zh": "正在加载模型…"},
    "tagline": {
        "en": "edgechat · {backend} · one shared model, your own conversation",
        "zh": "edgechat · {backend} · 大家共用一个模型，对话各自独立",
    },
    "language": {"en": "Language · 语言", "zh": "语言 · Language"},
    "ask": {"en": "Ask a question", "zh": "输入你的问题"},
    "blank": {"en": "Type a question first: empty input is ignored.", "zh": "请先输入问题：空白输入会被忽略。"},
    "too_long": {
        "en": "Your message is {n} characters; this server accepts up to {limit}. Shorten it and send again.",
        "zh": "你的消息有 {n} 个字符，本服务器最多接受 {limit} 个。请缩短后重新发送。",
    },
    "system_too_long": {
        "en": "The system prompt is {n} characters; this server accepts up to {limit}. The previous one stays.",
        "zh": "系统提示词有 {n} 个字符，本服务器最多接受 {limit} 个。仍使用之前的提示词。",
    },
    "rate_limited": {
        "en": "Too many requests: up to {limit} a minute per person. Try again in {wait} s.",
        "zh": "请求过于频繁：每人每分钟最多 {limit} 次。请 {wait} 秒后再试。",
    },
    "busy_answering": {
        "en": "Wait for the answer to finish (or stop it) before sending another question.",
        "zh": "请等回答结束（或停止它）后再发送新问题。",
    },
    "too_many_at_once": {
        "en": "You already have answers running or waiting from this computer; wait for one to finish.",
        "zh": "你这台电脑已有回答正在生成或排队，请等其中一个结束。",
    },
    "cannot_continue": {
        "en": "There is no stopped or cut-off answer to continue.",
        "zh": "没有可以继续的已停止或被截断的回答。",
    },
    # controls
    "new_chat": {"en": "New chat", "zh": "新对话"},
    "stop": {"en": "Stop generating", "zh": "停止生成"},
    "stop_help": {"en": "stop this answer and keep what was written", "zh": "停止本次回答，保留已生成的内容"},
    "regenerate": {"en": "Regenerate", "zh": "重新生成"},
    "edit": {"en": "Edit question", "zh": "修改问题"},
    "edit_label": {"en": "Your last question", "zh": "上一个问题"},
    "resend": {"en": "Resend", "zh": "重新发送"},
    "continue": {"en": "Continue", "zh": "继续生成"},
    "interrupted": {
        "en": "This answer was interrupted when the page went away; Continue goes on from here.",
        "zh": "页面离开时此回答被中断；点“继续生成”可从这里接着写。",
    },
    "dropped": {
        "en": "{n} of the oldest messages were removed: this chat reached its size limit.",
        "zh": "已删除最早的 {n} 条消息：此对话已达到长度上限。",
    },
    "copy": {"en": "Copy", "zh": "复制"},
    "copied": {"en": "Copied", "zh": "已复制"},
    "title_queued": {"en": "◌ queued", "zh": "◌ 排队中"},
    "title_answering": {"en": "● answering", "zh": "● 回答中"},
    "title_answered": {"en": "✓ answered", "zh": "✓ 已回答"},
    "copy_manual": {
        "en": "This browser blocked copying: the text is selected below, copy it by hand "
        "(Ctrl+C, or long-press → Copy).",
        "zh": "浏览器阻止了复制：文字已在下方选中，请手动复制（Ctrl+C，或长按 → 复制）。",
    },
    "meter": {
        "en": "used {used} / {context} tokens of the context before your next question",
        "zh": "下一个问题之前已用上下文 {used} / {context} tokens",
    },
    # saved chats
    "your_chats": {"en": "Your chats", "zh": "你的对话"},
    "untitled": {"en": "(untitled)", "zh": "（无标题）"},
    "rename": {"en": "Rename", "zh": "重命名"},
    "delete": {"en": "Delete", "zh": "删除"},
    "undo_delete": {"en": "Undo delete", "zh": "撤销删除"},
    "import": {"en": "Import a chat", "zh": "导入对话"},
    "import_help": {
        "en": "Paste the contents of a JSON export of this page; it opens as a new chat.",
        "zh": "粘贴本页 JSON 导出文件的内容，将作为新对话打开。",
    },
    "import_button": {"en": "Import", "zh": "导入"},
    "import_failed": {"en": "That file could not be imported: {reason}", "zh": "无法导入该文件：{reason}"},
    "chat_not_found": {
        "en": "That chat was not found: it may have been deleted, or it belongs to another browser.",
        "zh": "找不到该对话：它可能已被删除，或属于另一个浏览器。",
    },
    "history_off": {
        "en": "History is off: {reason}. Your chat still works, but is not saved.",
        "zh": "历史记录已关闭：{reason}。对话仍可继续，但不会保存。",
    },
    "cancel": {"en": "Cancel", "zh": "取消"},
    # answer settings
    "settings": {"en": "Answer settings", "zh": "回答设置"},
    "system": {"en": "System prompt", "zh": "系统提示词"},
    "system_help": {
        "en": "Sent before your conversation. Empty: the model's default.",
        "zh": "放在对话最前面；留空则使用模型默认值。",
    },
    "temperature": {"en": "Temperature", "zh": "温度 (temperature)"},
    "temperature_help": {
        "en": "0 = always the most likely word: the same question gets the same answer",
        "zh": "0 表示总选最可能的词：同一问题得到同一回答",
    },
    "reasoning": {"en": "Reasoning", "zh": "思考过程"},
    "sampling_fixed": {
        "en": "This model answers greedily: temperature, top-p, top-k and the penalty are not applied.",
        "zh": "此模型固定为贪心解码：温度、Top-p、Top-k 和重复惩罚不生效。",
    },
    "top_p": {"en": "Top-p", "zh": "Top-p 核采样"},
    "top_k": {"en": "Top-k (0 = off)", "zh": "Top-k（0 为关闭）"},
    "repetition_penalty": {"en": "Repetition penalty (1 = off)", "zh": "重复惩罚（1 为关闭）"},
    "max_new_tokens": {"en": "Max new tokens", "zh": "最大生成 token 数"},
    "settings_note": {
        "en": "These settings are yours alone; nobody else's chat changes.",
        "zh": "这些设置只对你自己生效，不影响其他人。",
    },
    # server panel
    "server": {"en": "Server", "zh": "服务器"},
    "server_model": {"en": "model file {file}", "zh": "模型文件 {file}"},
    "server_device": {"en": "{device} · context {context} tokens", "zh": "{device} · 上下文 {context} tokens"},
    "server_chip": {"en": "TPU {tpu}: {busy}/{slots}", "zh": "TPU {tpu}: {busy}/{slots}"},
    "server_chip_out": {"en": "TPU {tpu}: out", "zh": "TPU {tpu}: 已停用"},
    "server_load": {
        "en": "generating {running} · waiting {waiting} · {tps:.1f} tok/s",
        "zh": "生成中 {running} · 排队 {waiting} · {tps:.1f} tok/s",
    },
    "server_lan": {"en": "Others on the LAN open {url}", "zh": "局域网内其他人打开 {url}"},
    "server_prompt": {
        "en": "prompt tokens: {reused} reused · {shared} shared · {prefilled} read",
        "zh": "提示 tokens：复用 {reused} · 共享 {shared} · 读取 {prefilled}",
    },
    "handout": {"en": "Handout for everyone in this room", "zh": "本场讲义（所有人可见）"},
    "qr_caption": {"en": "Scan to join: {url}", "zh": "扫码加入：{url}"},
    "qr_show": {"en": "Show QR code large", "zh": "放大显示二维码"},
    "qr_close": {"en": "Close QR code", "zh": "关闭二维码"},
    "tls_fingerprint": {
        "en": "HTTPS certificate, SHA-256 fingerprint (compare it with your browser's warning):",
        "zh": "HTTPS 证书 SHA-256 指纹（请与浏览器警告中的指纹核对）：",
    },
    # one answer
    "queued": {"en": "queue position {position}, about {eta:.0f} s", "zh": "排队第 {position} 位，约 {eta:.0f} 秒"},
    "stat_first": {"en": "first token {s:.2f} s", "zh": "首字 {s:.2f} 秒"},
    "stat_tps": {"en": "{tps:.1f} tok/s", "zh": "{tps:.1f} tok/s"},
    "stat_tokens": {"en": "{n} tokens", "zh": "{n} 个 token"},
    "stat_queued": {"en": "queued {s:.1f} s", "zh": "排队 {s:.1f} 秒"},
    "stat_length": {"en": "stopped at the length limit", "zh": "达到长度上限"},
    "stopped": {"en": "stopped", "zh": "已停止"},
    "trimmed": {
        "en": "{n} earlier messages were left out so this conversation fits the model's context of {context} tokens.",
        "zh": "为放入模型 {context} tokens 的上下文，较早的 {n} 条消息未发送给模型。",
    },
    # export
    "export": {"en": "Export this chat", "zh": "导出对话"},
    "export_title": {"en": "Chat with {model}", "zh": "与 {model} 的对话"},
    "role_user": {"en": "You", "zh": "你"},
    "role_assistant": {"en": "Assistant", "zh": "助手"},
    # password gate
    "password_title": {"en": "This chat needs a password", "zh": "此对话需要密码"},
    "password": {"en": "Password", "zh": "密码"},
    "password_enter": {"en": "Enter", "zh": "进入"},
    "password_wrong": {"en": "Wrong password.", "zh": "密码错误。"},
    "password_locked": {
        "en": "Too many attempts: try again in {wait} s.",
        "zh": "尝试次数过多：请 {wait} 秒后再试。",
    },
}


def t(lang: str, key: str, **fields: Any) -> str:
    """The string in `lang`, falling back to English so a missing translation never breaks the page."""
    entry = TEXT[key]
    return entry.get(lang, entry["en"]).format(**fields)


def stats_line(stats: Mapping[str, Any], lang: str) -> str:
    """The line under an answer; in English exactly `TurnStats.summary()`."""
    parts = []
    if stats.get("first_token_s") is not None:
        parts.append(t(lang, "stat_first", s=stats["first_token_s"]))
    if stats.get("decode_tps") is not None:
        parts.append(t(lang, "stat_tps", tps=stats["decode_tps"]))
    parts.append(t(lang, "stat_tokens", n=stats.get("completion_tokens", 0)))
    if stats.get("queue_wait_s", 0.0) >= 0.05:
        parts.append(t(lang, "stat_queued", s=stats["queue_wait_s"]))
    if stats.get("finish_reason") == "length":  # max new tokens, or the context is full
        parts.append(t(lang, "stat_length"))
    return " · ".join(parts)
