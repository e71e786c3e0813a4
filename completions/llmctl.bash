# Generated from llmctl's command tree by `python -m llmctl.cli.completions`; do not edit.

_llmctl() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" path="" i word
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in -*) continue ;; esac
        case "$path" in
            "") case "$word" in bench|check|config|embed|generate|inspect-arch|quantize-info) path="${path:+$path }$word" ;; esac ;;
            "config") case "$word" in show) path="${path:+$path }$word" ;; esac ;;
        esac
    done
    case "$path" in
        "bench")
            case "$prev" in
                --dtype) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --device) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --batch-size) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --input-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --output-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --num-prompts) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --against) COMPREPLY=($(compgen -W "transformers" -- "$cur")); return ;;
                --repeats) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-model-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-num-seqs) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --min-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--random-weights --dtype --device --batch-size --input-len --output-len --num-prompts --against --repeats --json --enforce-eager --max-model-len --max-num-seqs --min-len --max-len --help -h" -- "$cur"))
            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
            ;;
        "check")
            case "$prev" in
                --task) COMPREPLY=($(compgen -W "generate embed" -- "$cur")); return ;;
                --max-model-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --gpu-memory) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --revision) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --source) COMPREPLY=($(compgen -W "hf modelscope" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--task --max-model-len --gpu-memory --trust-remote-code --json --revision --source --help -h" -- "$cur"))
            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
            ;;
        "config show")
            case "$prev" in
            esac
            COMPREPLY=($(compgen -W "--json --help -h" -- "$cur"))
            ;;
        "embed")
            case "$prev" in
                --model|-m) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --format) COMPREPLY=($(compgen -W "jsonl npy csv tsv" -- "$cur")); return ;;
                --output|-o) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --pooling) COMPREPLY=($(compgen -W "cls mean max lasttoken" -- "$cur")); return ;;
                --prompt-name) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --instruction) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --dimensions) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --query) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --top-k) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --batch-size) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --dtype) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --device) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --revision) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --source) COMPREPLY=($(compgen -W "hf modelscope" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--model -m --format --output -o --with-text --pooling --normalize --no-normalize --prompt-name --instruction --dimensions --query --top-k --batch-size --dtype --device --trust-remote-code --revision --source --help -h" -- "$cur"))
            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
            ;;
        "generate")
            case "$prev" in
                --prompt|-p) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --file|-f) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --model|-m) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --system) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-tokens) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --min-tokens) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --temperature|-t) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --top-p) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --top-k) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --min-p) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --repetition-penalty) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --presence-penalty) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --frequency-penalty) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --stop) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --stop-token-id) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --logprobs) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --prompt-logprobs) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --seed) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --dtype) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --device) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-model-len) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --max-num-seqs) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --model-impl) COMPREPLY=($(compgen -W "auto native transformers" -- "$cur")); return ;;
                --revision) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --source) COMPREPLY=($(compgen -W "hf modelscope" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--prompt -p --file -f --model -m --chat --no-chat --system --max-tokens --min-tokens --temperature -t --top-p --top-k --min-p --repetition-penalty --presence-penalty --frequency-penalty --stop --stop-token-id --ignore-eos --include-stop-str-in-output --skip-special-tokens --keep-special-tokens --logprobs --prompt-logprobs --seed --json --stream --no-stream --dtype --device --max-model-len --max-num-seqs --trust-remote-code --model-impl --enforce-eager --revision --source --help -h" -- "$cur"))
            ;;
        "inspect-arch")
            case "$prev" in
                --revision) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --source) COMPREPLY=($(compgen -W "hf modelscope" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--json --revision --source --help -h" -- "$cur"))
            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
            ;;
        "quantize-info")
            case "$prev" in
                --revision) COMPREPLY=($(compgen -f -- "$cur")); return ;;
                --source) COMPREPLY=($(compgen -W "hf modelscope" -- "$cur")); return ;;
            esac
            COMPREPLY=($(compgen -W "--json --revision --source --help -h" -- "$cur"))
            [[ "$cur" != -* ]] && COMPREPLY+=($(compgen -f -- "$cur"))
            ;;
        "") COMPREPLY=($(compgen -W "bench check config embed generate inspect-arch quantize-info --debug --version --help -h" -- "$cur")) ;;
        "config") COMPREPLY=($(compgen -W "show --help" -- "$cur")) ;;
    esac
}
complete -o default -F _llmctl llmctl
