"""The console's words in Chinese (zh-CN) and English.

The language is the user's choice (``?lang=`` sets a cookie), else the first of
zh / en in the browser's Accept-Language, else Chinese: the console is for
hospitals in China.  Patient data is never translated: names show as written.
"""

from __future__ import annotations

from aiohttp import web

LANGS = ("zh-CN", "en")
COOKIE = "fenji_lang"

# key: (English, 中文)
_WORDS: dict[str, tuple[str, str]] = {
    "app": ("fenji console", "分级诊疗控制台"),
    "sign_in": ("Sign in", "登录"),
    "sign_out": ("Sign out", "退出"),
    "token": ("Your access token", "您的访问令牌"),
    "token_help": ("The token `fenji user add` printed for you.",
                   "由 `fenji user add` 生成的令牌。"),
    "bad_token": ("Unknown or revoked token.", "令牌无效或已被吊销。"),
    "signed_in_as": ("Signed in as", "当前用户"),
    "role_technician": ("Technician", "技师"),
    "role_reader": ("Reader", "诊断医生"),
    "role_physician": ("Requesting physician", "申请医生"),
    "role_operator": ("Operator", "运维人员"),
    "forbidden": ("Not allowed", "无权访问"),
    "error": ("Error", "错误"),
    "back": ("Back", "返回"),
    "arrived": ("Studies and ECGs arrived", "已接收的检查和心电图"),
    "cases": ("Cases", "病例"),
    "no_items": ("Nothing yet.", "暂无。"),
    "patient": ("Patient", "患者"),
    "study": ("Study", "检查"),
    "modality": ("Modality", "设备类型"),
    "instances": ("Instances", "图像数"),
    "received": ("Received", "接收时间"),
    "quality": ("Quality", "质量"),
    "reasons": ("Reasons", "原因"),
    "preview": ("Preview", "预览"),
    "release": ("Release", "发送"),
    "priority": ("Priority", "优先级"),
    "stat": ("STAT", "急诊"),
    "urgent": ("urgent", "加急"),
    "routine": ("routine", "常规"),
    "question": ("Clinical question", "临床问题"),
    "physician": ("Requesting physician", "申请医生"),
    "consent": ("Consent reference", "知情同意书编号"),
    "destination": ("Destination", "目标中心"),
    "held": ("Held by the quality gate", "质量检查未通过，已暂停"),
    "override": ("Override with reason", "说明原因后强制发送"),
    "reason": ("Reason", "原因"),
    "state": ("State", "状态"),
    "in_flight": ("In flight", "传输中"),
    "sent": ("Sent", "已发送"),
    "eta": ("ETA", "预计剩余"),
    "link": ("Link", "链路"),
    "preview_at_center": ("Center's signed receipt", "中心已签收"),
    "yes": ("yes", "是"),
    "no": ("no", "否"),
    "worklist": ("Worklist", "工作列表"),
    "waiting": ("Waiting", "等待"),
    "hospital": ("Sending hospital", "送检医院"),
    "attested_by": ("attested by", "确认人"),
    "claim": ("Claim", "认领"),
    "claimed_by": ("Claimed by", "认领人"),
    "open": ("Open", "打开"),
    "open_images": ("Open images", "查看图像"),
    "open_ecg": ("Open 12-lead ECG", "查看十二导联心电图"),
    "report": ("Report", "报告"),
    "findings": ("Findings", "检查所见"),
    "impression": ("Impression", "诊断意见"),
    "critical": ("Critical finding", "危急值"),
    "sign": ("Sign report", "签发报告"),
    "amend": ("Amend (reason required)", "修改报告（需说明原因）"),
    "amendment_reason": ("Amendment reason", "修改原因"),
    "versions": ("All versions", "所有版本"),
    "version": ("Version", "版本"),
    "signed_at": ("Signed", "签发时间"),
    "reader": ("Reader", "诊断医生"),
    "turnaround": ("Turnaround", "周转时间"),
    "reports": ("Reports", "报告"),
    "critical_banner": ("CRITICAL FINDING — act now", "危急值 — 请立即处理"),
    "acknowledge": ("Acknowledge", "确认已阅"),
    "acknowledged": ("Acknowledged", "已确认"),
    "pdf": ("Report PDF", "报告PDF"),
    "queues": ("Queues and links", "队列与链路"),
    "peers": ("Peers", "对端节点"),
    "audit": ("Audit history", "审计记录"),
    "verified": ("verified", "已验证"),
    "not_verified": ("NOT verified", "未通过验证"),
    "unsigned": ("not yet under a signed head", "尚未签名"),
    "ledger": ("Ledger", "账本"),
    "stats": ("Statistics and fees", "统计与费用"),
    "tat_plot": ("Turnaround by priority over time (minutes)", "按优先级的周转时间（分钟）"),
    "volume_plot": ("Cases per hospital per month", "各医院每月病例数"),
    "fees": ("Fees this month", "本月费用"),
    "jobs": ("Jobs", "任务"),
    "errors": ("Errors", "错误"),
    "throughput": ("Throughput", "吞吐量"),
    "schedule": ("Schedule", "时间表"),
    "url": ("URL", "地址"),
    "event": ("Event", "事件"),
    "actor": ("Actor", "操作人"),
    "node": ("Node", "节点"),
    "time": ("Time", "时间"),
    "ecg_view": ("12-lead ECG", "十二导联心电图"),
    "ecg_scale": ("25 mm/s, 10 mm/mV", "25 mm/s，10 mm/mV"),
    "language": ("中文", "English"),
}


def choose(request: web.Request) -> str:
    asked = request.query.get("lang") or request.cookies.get(COOKIE)
    if asked in LANGS:
        return asked
    best: tuple[float, str] | None = None
    for i, part in enumerate(request.headers.get("Accept-Language", "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = "zh-CN" if tag.lower().startswith("zh") else "en" if \
            tag.lower().startswith("en") else None
        if lang and q > 0 and (best is None or q > best[0]):
            best = (q - i * 1e-6, lang)
    return best[1] if best else "zh-CN"


def words(lang: str) -> dict[str, str]:
    i = 1 if lang == "zh-CN" else 0
    return {k: v[i] for k, v in _WORDS.items()}


def other(lang: str) -> str:
    return "en" if lang == "zh-CN" else "zh-CN"
