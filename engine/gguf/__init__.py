"""GGUF export for llama.cpp, Ollama and LM Studio, checked by llama.cpp itself.

`arch` knows the architectures we write (their hyper-parameters and tensor names),
`vocab` the tokenizer metadata, `writer` a whole model, `lora` a LoRA adapter in
llama.cpp's adapter format, `modelfile` the Ollama Modelfile, and `check` loads what was
written with llama.cpp and compares its greedy answers with PEFT's.
"""
