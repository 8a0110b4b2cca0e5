"""Tiny Chinese BERT pretraining: the tiny config on Chinese text, bert-base-chinese's vocabulary.

One document per review, ChnSentiCorp's training text as the example (see docs/data.md, "Chinese
text"):

    cut -f2 ../shared/data/chinese/chnsenticorp/train.tsv | tail -n +2 | sed G > chnsenticorp.txt
    python -m bertjax.main --config=configs/bert_tiny_chinese_pretrain.py --workdir=/tmp/zh_tiny \
        --config.data.text_files=chnsenticorp.txt

`sed G` puts a blank line after every review, so each review is one "paragraphs" document, split
into sentences on Chinese and English terminators (`bertjax.data.sentences`). Everything else
(model size, optimizer, schedule, mesh) is configs/bert_tiny_pretrain.py's; override any key on
the command line.
"""

import ml_collections

from bertjax import config_defaults

# bert-base-chinese's vocab.txt (21,128 tokens) where the development machines keep it; point
# --config.data.vocab_file elsewhere on other machines.
CHINESE_VOCAB = "../shared/data/chinese/bert-base-chinese/vocab.txt"


def get_config() -> ml_collections.ConfigDict:
    """The tiny pretraining config reading Chinese paragraphs with the bert-base-chinese vocab."""
    config = config_defaults.from_file(__file__, "bert_tiny_pretrain.py")
    config.data.source = "text_files"
    config.data.text_files = ""  # required: one document per blank-line-separated paragraph
    config.data.text_format = "paragraphs"
    config.data.vocab_file = CHINESE_VOCAB
    # bert-base-chinese is uncased (Latin letters lower-cased, accents stripped); every CJK
    # character is its own token (tokenize_chinese_chars), as in transformers' BertTokenizer.
    config.data.do_lower_case = True
    # Reviews shorter than this are dropped (counted in the log): too short for a sentence pair.
    config.data.min_document_chars = 20
    config.data.eval_fraction = 0.02
    return config
