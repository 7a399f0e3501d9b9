"""Playground: chat with a model (streamed answers), generate images, and turn text into speech."""

import random

import streamlit as st

from blossom_dash import DashError, ui
from blossom_dash.features import conversations, snippets
from blossom_dash.features.gallery import GALLERY_KEY, GALLERY_MAX_IMAGES, add_image
from blossom_dash.sdk.speech import FORMATS, MAX_SPEECH_CHARS, VOICES
from blossom_dash.ui import chat as ui_chat
from blossom_dash.ui.safe import safe_markdown

handle = ui.session_handle()
service = handle.service
st.title("Playground")
ui.backend_badge(service)
if service.replay_only:
    st.caption(":violet-badge[📼 REPLAY ONLY] Answers come from recordings; prompts not recorded are refused.")

SIZES = {"Square 1024×1024": (1024, 1024), "Square 512×512": (512, 512), "Landscape 1024×768": (1024, 768),
         "Portrait 768×1024": (768, 1024), "Wide 1280×720": (1280, 720)}
st.session_state.setdefault("playground_messages", [])
st.session_state.setdefault("playground_image_seed", random.randint(0, 2**31 - 1))


render_turn = ui_chat.render_turn
if shared_id := st.query_params.get("conversation"):  # a permalink: the shared chat, read-only
    ui_chat.shared_conversation_ui(handle, shared_id)
    st.stop()

chat_tab, image_tab, speech_tab = st.tabs(["💬 Chat", "🖼️ Image", "🔊 Speech"])

with chat_tab:
    with st.expander("Model and parameters", expanded=False):
        left, right = st.columns(2)
        model = ui.model_picker(service, "text", key="playground_model", where=left)
        max_tokens = right.number_input("Max tokens", 1, 8192, 512, step=64, key="playground_max_tokens")
        temperature = left.slider("Temperature", 0.0, 2.0, 1.0, 0.05, key="playground_temperature",
                                  help="0 = focused and repeatable, 1 = the model's default, 2 = most varied.")
        seed = right.number_input("Seed (optional)", 0, 2**31 - 1, value=None, key="playground_seed",
                                  placeholder="random", help="Set a seed to get the same answer again.")
        system = st.text_area("System prompt (optional)", key="playground_system", height=80,
                              placeholder="e.g. You are a concise analyst. Answer in bullet points.")
        stream_on = st.toggle("Stream the answer", value=True, key="playground_stream")

    history = st.session_state["playground_messages"]
    bar = st.container(horizontal=True)  # Clear and Share side by side
    if history and bar.button("Clear chat", key="playground_clear", icon="🧹"):
        st.session_state["playground_messages"] = history = []
    if history and bar.button("🔗 Share", key="playground_share", help="Save this chat and get a read-only link"):
        with ui.guard("sharing the chat"):
            st.success("Anyone with this link sees the chat as it is now, read-only:", icon="🔗")
            st.code(conversations.share_link(st.context.url, handle.save_conversation(history).id), language=None)
    conversation = st.container()  # turns render here, above the input box
    prompt = st.chat_input("Ask a model…", key="playground_prompt")
    if not history and prompt is None:
        conversation.info("Ask anything below. Answers stream in as they are generated; the line under each "
                          "answer shows its latency, time to first token (TTFT), tokens and whether it came "
                          "from the cache.")
    for msg in history:
        with conversation.chat_message(msg["role"]):
            render_turn(msg)
    if prompt is not None:
        with conversation.chat_message("user"):
            st.markdown(safe_markdown(prompt))
        params = {"model": model, "system": system or None, "max_tokens": int(max_tokens),
                  "temperature": None if temperature == 1.0 else float(temperature),
                  "seed": None if seed is None else int(seed),
                  "messages": [{"role": m["role"], "content": m["content"]} for m in history]}
        with conversation.chat_message("assistant"):
            try:
                if stream_on:
                    stream = handle.stream_text(prompt, **params)
                    box, shown = st.empty(), ""
                    for chunk in stream:  # as st.write_stream does, but each redraw made inert
                        shown += chunk
                        box.markdown(safe_markdown(shown) + " ▌")
                    box.markdown(safe_markdown(shown))
                    result = stream.result
                else:
                    with st.spinner("Waiting for the answer…"):
                        result = handle.generate_text(prompt, **params)
                    st.markdown(safe_markdown(result.text))
            except DashError as err:
                ui.show_error(err)
            else:
                caption = ui.result_caption(result)
                st.caption(caption)
                history += [{"role": "user", "content": prompt},
                            {"role": "assistant", "content": result.text, "caption": caption,
                             "code": snippets.code_for_text(prompt, **params)}]
                st.rerun()  # redraw from history, so the turn sits above the input with its controls

with image_tab:
    with st.form("playground_image_form", border=False):
        image_prompt = st.text_area("Describe the image", key="playground_image_prompt", height=90,
                                    placeholder="A watercolour lighthouse at dawn, soft light")
        c1, c2, c3 = st.columns([2, 2, 1])
        image_model = ui.model_picker(service, "image", key="playground_image_model", where=c1)
        size = c2.selectbox("Size", list(SIZES), key="playground_image_size")
        image_seed = c3.number_input("Seed", 0, 2**31 - 1, key="playground_image_seed")
        generate = st.form_submit_button("Generate image", type="primary", icon="🎨")
    st.button("🎲 New seed", key="playground_new_seed", help="Pick a random seed for a different image",
              on_click=lambda: st.session_state.update(playground_image_seed=random.randint(0, 2**31 - 1)))
    if generate:
        width, height = SIZES[size]
        with ui.guard("generating the image"), st.spinner("Generating…"):
            st.session_state["playground_last_image"] = image = handle.generate_image(
                image_prompt, model=image_model, width=width, height=height, seed=int(image_seed))
            st.session_state["playground_image_code"] = snippets.code_for_image(image_prompt, image.model, width,
                                                                                height, image.seed)
            st.session_state[GALLERY_KEY] = add_image(st.session_state.get(GALLERY_KEY, []), image, image_prompt)
    image = st.session_state.get("playground_last_image")
    if image is not None:
        st.image(image.data, caption=f"seed {image.seed} · {image.width}×{image.height}", width=min(image.width, 640))
        st.caption(ui.result_caption(image) + f" · also in the **Gallery** (this session's last {GALLERY_MAX_IMAGES})")
        st.expander("Show code", icon="🐍").code(st.session_state.get("playground_image_code", ""), language="python")
        ext = image.content_type.split("/")[-1].replace("jpeg", "jpg")
        st.download_button("Download", image.data, file_name=f"blossom-{image.model}-{image.seed}.{ext}",
                           mime=image.content_type, key="playground_download", icon="⬇️")

with speech_tab:
    with st.form("playground_speech_form", border=False):
        speech_text = st.text_area("Text to speak", key="playground_speech_text", height=90, max_chars=MAX_SPEECH_CHARS,
                                   placeholder="Welcome to the quarterly review. Latency is down, the hit rate is up.")
        c1, c2, c3 = st.columns([2, 2, 1])
        voice_model = ui.model_picker(service, "audio", key="playground_speech_model", where=c1,
                                      help="Models whose output includes audio (on Pollinations: openai-audio).")
        voice = c2.selectbox("Voice", VOICES, key="playground_speech_voice")
        audio_format = c3.selectbox("Format", list(FORMATS), key="playground_speech_format", format_func=str.upper)
        speak = st.form_submit_button("Speak", type="primary", icon="🔊")
    if speak:
        with ui.guard("synthesising speech"), st.spinner("Synthesising speech…"):
            st.session_state["playground_last_speech"] = handle.generate_speech(
                speech_text, model=voice_model, voice=voice, audio_format=audio_format)
    if (clip := st.session_state.get("playground_last_speech")) is not None:
        if clip.note:
            st.info(clip.note, icon="ℹ️")
        st.audio(clip.data, format=clip.content_type)
        st.caption(f"{clip.summary} · {ui.result_caption(clip)}")
        st.download_button("Download", clip.data, file_name=clip.file_name, mime=clip.content_type,
                           key="playground_speech_download", icon="⬇️", on_click="ignore")
