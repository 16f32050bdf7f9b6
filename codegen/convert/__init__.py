"""Convert a Hugging Face checkpoint into the artifact's tensor cache and chat config.

checkpoint reads safetensors / pytorch_model.bin strictly; weights maps tensors through the
generated weight map; chat_config writes mlc-chat-config.json and copies the tokenizer files.
"""
