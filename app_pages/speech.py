"""Speech: turn text into spoken audio with a voice model, to play or download."""

import streamlit as st

from blossom_dash import ui
from blossom_dash.sdk.speech import FORMATS, MAX_SPEECH_CHARS, VOICES

handle = ui.session_handle()
service = handle.service
st.title("Speech")
ui.backend_badge(service)
if service.replay_only:
    st.caption(":violet-badge[📼 REPLAY ONLY] Audio comes from recordings; texts not recorded are refused.")

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
elif not speak:
    st.info(f"Type up to {MAX_SPEECH_CHARS:,} characters, pick a voice and press **Speak**.", icon="🔊")
