"""Sentence splitting (bertjax.data.sentences): Chinese, English and mixed text, hand-made cases."""

import pytest

from bertjax.data.sentences import split_sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        # The Chinese terminators 。！？； each end a sentence, with or without a space after.
        (
            "房间很大。服务很好！还会再来吗？会的；一定。",
            ["房间很大。", "服务很好！", "还会再来吗？", "会的；", "一定。"],
        ),
        ("酒店装修一般，但还算整洁。 泳池很小", ["酒店装修一般，但还算整洁。", "泳池很小"]),
        # Runs of terminators stay together: ！？ ？！ 。。。 ！！！
        (
            "真的吗？！不会吧！？好吧。。。再说！！！",
            ["真的吗？！", "不会吧！？", "好吧。。。", "再说！！！"],
        ),
        ("房间太小。其他的都一般。。。。。。", ["房间太小。", "其他的都一般。。。。。。"]),
        # The ellipsis …… and … end a sentence in Chinese text.
        ("一般般……下次不来了…算了", ["一般般……", "下次不来了…", "算了"]),
        # Closing quotes and brackets after a terminator stay with the sentence they close.
        ("他说：“太好了！”然后走了。", ["他说：“太好了！”", "然后走了。"]),
        ("「我不去。」她说（真的？）那好吧", ["「我不去。」", "她说（真的？）", "那好吧"]),
        ("《三体》很好看。』下一本", ["《三体》很好看。』", "下一本"]),
        # ... but a clause mark after the quote means the sentence goes on.
        ("“好！”，他说。“走吧？”、“不走！”：都行", ["“好！”，他说。", "“走吧？”、“不走！”：都行"]),
        # Half-width terminators in Chinese text, with or without a space.
        (
            "电源热的不行.摄像头用不起来!键盘还行?价格便宜;质量好",
            ["电源热的不行.", "摄像头用不起来!", "键盘还行?", "价格便宜;", "质量好"],
        ),
        # Enumerators and decimals are not sentence ends.
        (
            "1.接电源没几分钟,适配器很热. 2.摄像头用不起来. 15.4寸的屏幕",
            ["1.接电源没几分钟,适配器很热.", "2.摄像头用不起来.", "15.4寸的屏幕"],
        ),
        (
            "屏幕１．５寸，网址ｗｗｗ．ｂａｉｄｕ．ｃｏｍ。",
            ["屏幕１．５寸，网址ｗｗｗ．ｂａｉｄｕ．ｃｏｍ。"],
        ),
        # The half-width ideographic full stop.
        ("很好｡下次再来", ["很好｡", "下次再来"]),
        # A space between two Han characters separates sentences; one inside English does not.
        (
            "看了很失望 写得不生动 《步步惊心》更好",
            ["看了很失望", "写得不生动", "《步步惊心》更好"],
        ),
        ("用了 Windows 7 系统，很流畅", ["用了 Windows 7 系统，很流畅"]),
    ],
)
def test_chinese(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # English sentences inside a Chinese document ...
        (
            "这个酒店很好。The staff were friendly. Dr. Wang agreed.下次还来！",
            ["这个酒店很好。", "The staff were friendly.", "Dr. Wang agreed.", "下次还来！"],
        ),
        ("It was great. 下次还来", ["It was great.", "下次还来"]),
        ("Good!下次再来", ["Good!", "下次再来"]),
        # ... Chinese inside English text ...
        (
            'The sign said "欢迎光临。" We went in. 老板说：你好！ Then we ate.',
            ['The sign said "欢迎光临。"', "We went in.", "老板说：你好！", "Then we ate."],
        ),
        # ... without splitting abbreviations or initials before Chinese.
        ("He came at 5 p.m. 然后走了", ["He came at 5 p.m. 然后走了"]),
        ("见了Dr.王和J.李", ["见了Dr.王和J.李"]),
        ("Price: 3.5元, see e.g.说明书", ["Price: 3.5元, see e.g.说明书"]),
        # Korean is spaced like English, but its sentences end with `.` before Hangul.
        ("좋았어요. 다시 갈게요", ["좋았어요.", "다시 갈게요"]),
    ],
)
def test_mixed_chinese_and_english(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'Dr. Smith arrived at 5 p.m. yesterday. He said "Hello!" Then he left? '
            "Yes. See e.g. the docs, i.e. the manual. J. R. R. Tolkien wrote it. 3 cats ran.",
            [
                "Dr. Smith arrived at 5 p.m. yesterday.",
                'He said "Hello!"',
                "Then he left?",
                "Yes.",
                "See e.g. the docs, i.e. the manual.",
                "J. R. R. Tolkien wrote it.",
                "3 cats ran.",
            ],
        ),
        # English keeps its rules: lower case after a full stop, `;`, a lone `…`, decimals, URLs.
        (
            "It costs 3.5 dollars. see below; Then more… Next",
            ["It costs 3.5 dollars. see below; Then more… Next"],
        ),
        (
            "Visit www.example.com?id=3 now. Really?! Yes.",
            ["Visit www.example.com?id=3 now.", "Really?!", "Yes."],
        ),
        ("", []),
        ("   \n ", []),
        ("。", ["。"]),
        ("好。\n\n  好。", ["好。", "好。"]),
    ],
)
def test_english_and_edge_cases(text, expected):
    assert split_sentences(text) == expected


def test_nothing_is_lost():
    """The sentences, joined, are the input text with its whitespace collapsed (minus spaces
    at the boundaries): splitting never drops or reorders characters."""
    text = "选择珠江花园的原因就是方便。 酒店装修一般！！ OK. Great… 1.好 2.坏\n“真的？”他问。"
    joined = "".join(split_sentences(text)).replace(" ", "")
    assert joined == "".join(text.split())
