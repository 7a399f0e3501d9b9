"""Playground: chat with a model; the answer streams in view above the input pinned at the bottom."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.features import conversations
from blossom_dash.ui import attachments, history
from blossom_dash.ui import chat as ui_chat

handle = ui.session_handle()
service = handle.service
if shared_id := st.query_params.get("conversation"):  # a permalink: the shared chat, read-only
    ui_chat.shared_conversation_ui(handle, shared_id)
    st.stop()

ui_chat.follow_chat_link(handle)  # ?chat=<id>: a reload or Monitor's link resumes that saved chat
history.chat_history_sidebar(handle)
if ui_chat.needs_save():  # an answer was stopped: save it as it was kept
    history.save_current_chat(handle)
chat = ui_chat.messages()
st.title("Playground")
ui.backend_badge(service)
if service.replay_only:
    st.caption(":violet-badge[📼 REPLAY ONLY] Answers come from recordings; prompts not recorded are refused.")

bar = st.container(horizontal=True, vertical_alignment="center")
chosen = st.session_state.get("playground_model")
dock = st.bottom.container(horizontal=True, vertical_alignment="bottom")  # pinned: the settings beside the input
with dock.popover(f"Model: {chosen}" if chosen else "Model and parameters", icon="⚙️",
                 help="The model, its parameters and a system prompt"):
    model = ui.model_picker(service, "text", key="playground_model")
    left, right = st.columns(2)
    max_tokens = right.number_input("Max tokens", 1, 8192, 512, step=64, key="playground_max_tokens")
    temperature = left.slider("Temperature", 0.0, 2.0, 1.0, 0.05, key="playground_temperature",
                              help="0 = focused and repeatable, 1 = the model's default, 2 = most varied.")
    seed = right.number_input("Seed (optional)", 0, 2**31 - 1, value=None, key="playground_seed",
                              placeholder="random", help="Set a seed to get the same answer again.")
    system = st.text_area("System prompt (optional)", key="playground_system", height=80,
                          placeholder="e.g. You are a concise analyst. Answer in bullet points.")
    stream_on = st.toggle("Stream the answer", value=True, key="playground_stream")
if chat and bar.button("New chat", key="playground_clear", icon="🧹", help="Start an empty chat (this one stays "
                       "in Your chats)", on_click=history.start_new_chat):
    chat = ui_chat.messages()
if chat and bar.button("🔗 Share", key="playground_share", help="Save this chat and get a read-only link"):
    with ui.guard("sharing the chat"):
        st.success("Anyone with this link sees the chat as it is now, read-only:", icon="🔗")
        st.code(conversations.share_link(st.context.url, handle.save_conversation(chat).id), language=None)

ui_chat.template_button(handle, dock)
sees = service.model_sees_images(model)
prompt, images = attachments.read_input(dock.chat_input(
    "Ask a model… or attach images" if sees else "Ask a model…", key="playground_prompt", submit_mode="stop",
    **attachments.CHAT_INPUT_ARGS))
if prompt is not None and not prompt.strip() and not images:
    st.error("The prompt is empty: type a question or an instruction, then press Enter.", icon="✏️")
    prompt = None
if warning := attachments.vision_warning(handle, model, images):
    st.warning(f"{warning} Your message and its images are kept below: pick a model under ⚙️, then Retry.",
               icon="🖼️")
answer_now, new_seed = ui_chat.take_turn(chat, prompt, images)
if not chat:
    st.info("Ask anything below. Answers stream in as they are generated; the line under each answer shows "
            "its latency, time to first token (TTFT), tokens and cost. While an answer streams, ■ in the box "
            "stops it; under the newest answer you can regenerate it, edit your prompt and resend, or copy it.",
            icon="💬")
ui_chat.render_chat(handle, chat, answering=answer_now)
if answer_now:
    chat_id = history.save_current_chat(handle)  # before sending: the requests are linked to the chat
    params = {"model": model, "system": system or None, "max_tokens": int(max_tokens),
              "temperature": None if temperature == 1.0 else float(temperature),
              "seed": new_seed if new_seed is not None else (None if seed is None else int(seed)),
              **ui_chat.template_overrides()}
    ui_chat.answer(handle, chat, params, stream_on=stream_on, context=f"chat:{chat_id}" if chat_id else "")
    history.save_current_chat(handle)
    st.rerun()  # redraw from the chat, so the turn sits above the input with its actions
