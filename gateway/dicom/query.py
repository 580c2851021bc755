"""Query/retrieve model shared by C-FIND/C-MOVE/C-GET (gateway/dimse/qr.py) and QIDO-RS.

:func:`find` answers a query at the PATIENT, STUDY, SERIES or IMAGE level from
the store's index with PS3.4 C.2.2.2 matching:

* single value: exact (case-sensitive), or ``*``/``?`` wildcards;
* a list of UIDs separated by ``\\``;
* date and time ranges ``20240101-20241231``, ``-20241231``, ``20240101-``;
* an empty value: a return key (no matching);
* ``fuzzy=True``: person names match case-insensitively by word prefix
  ("wang" matches "WANG^XIAOMING" and "Li^Wang"), ``^`` and spaces alike.

Keys the index does not hold are ignored for matching (PS3.4 allows an SCP to
ignore optional keys) and returned empty.  Everything is SQL on indexed
columns, so it stays fast with 100,000 instances.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fenji.gateway.errors import PeerError
from fenji.gateway.store.index import POSTGRESQL, SQLITE

if TYPE_CHECKING:
    from fenji.gateway.store.db import Store

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")



class QueryError(PeerError, ValueError):
    """A query that cannot be answered (bad level, bad range); the message says why."""

    dicom_status = 0xA900  # C-FIND: Identifier does not match SOP Class (PS3.4 C.4.1.1.4)


# keyword -> (level it belongs to, SQL expression, kind)
COLUMNS: dict[str, tuple[str, str, str]] = {
    "PatientName": ("PATIENT", "p.patient_name", "PN"),
    "PatientID": ("PATIENT", "p.patient_id", "LO"),
    "PatientBirthDate": ("PATIENT", "p.birth_date", "DA"),
    "PatientSex": ("PATIENT", "p.sex", "CS"),
    "StudyInstanceUID": ("STUDY", "st.study_instance_uid", "UI"),
    "StudyDate": ("STUDY", "st.study_date", "DA"),
    "StudyTime": ("STUDY", "st.study_time", "TM"),
    "AccessionNumber": ("STUDY", "st.accession_number", "SH"),
    "StudyID": ("STUDY", "st.study_id", "SH"),
    "StudyDescription": ("STUDY", "st.study_description", "LO"),
    "ReferringPhysicianName": ("STUDY", "st.referring_physician", "PN"),
    "SeriesInstanceUID": ("SERIES", "se.series_instance_uid", "UI"),
    "Modality": ("SERIES", "se.modality", "CS"),
    "SeriesNumber": ("SERIES", "se.series_number", "IS"),
    "SeriesDescription": ("SERIES", "se.series_description", "LO"),
    "SOPClassUID": ("IMAGE", "i.sop_class_uid", "UI"),
    "SOPInstanceUID": ("IMAGE", "i.sop_instance_uid", "UI"),
    "InstanceNumber": ("IMAGE", "i.instance_number", "IS"),
}
_RANK = {lvl: n for n, lvl in enumerate(LEVELS)}
# The unique (or, for PATIENT, the identifying) key of each level.
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

_FROM = {
    "PATIENT": "FROM patients p",
    "STUDY": "FROM studies st",
    "SERIES": "FROM series se JOIN studies st ON st.study_instance_uid = se.study_instance_uid",
    "IMAGE": "FROM instances i JOIN series se ON se.series_instance_uid = i.series_instance_uid "
             "JOIN studies st ON st.study_instance_uid = i.study_instance_uid",
}
# Computed return keys per level.
_COUNTS = {
    "PATIENT": {
        "NumberOfPatientRelatedStudies":
            "(SELECT count(*) FROM studies x WHERE x.patient_id = p.patient_id)",
        "NumberOfPatientRelatedSeries":
            "(SELECT count(*) FROM series x JOIN studies y ON y.study_instance_uid = "
            "x.study_instance_uid WHERE y.patient_id = p.patient_id)",
        "NumberOfPatientRelatedInstances":
            "(SELECT count(*) FROM instances x JOIN studies y ON y.study_instance_uid = "
            "x.study_instance_uid WHERE y.patient_id = p.patient_id)",
    },
    "STUDY": {
        "ModalitiesInStudy": "(SELECT group_concat(DISTINCT x.modality) FROM series x "
                             "WHERE x.study_instance_uid = st.study_instance_uid)",
        "NumberOfStudyRelatedSeries": "(SELECT count(*) FROM series x WHERE "
                                      "x.study_instance_uid = st.study_instance_uid)",
        "NumberOfStudyRelatedInstances": "(SELECT count(*) FROM instances x WHERE "
                                         "x.study_instance_uid = st.study_instance_uid)",
    },
    "SERIES": {
        "NumberOfSeriesRelatedInstances": "(SELECT count(*) FROM instances x WHERE "
                                          "x.series_instance_uid = se.series_instance_uid)",
    },
    "IMAGE": {"sha256": "i.sha256", "transfer_syntax_uid": "i.transfer_syntax_uid",
              "size": "i.size"},
}


# Patient attributes as each study recorded them (the same patient ID may carry
# another name in another study); the patients table is the PATIENT level's view.
# Plain columns, not expressions, so that their indexes serve the matching.
_STUDY_PATIENT = {"PatientName": "st.patient_name", "PatientBirthDate": "st.birth_date",
                  "PatientSex": "st.sex", "PatientID": "st.patient_id"}


def _expr(keyword: str, level: str) -> str:
    if level != "PATIENT" and keyword in _STUDY_PATIENT:
        return _STUDY_PATIENT[keyword]
    return COLUMNS[keyword][1]


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]])", r"[\1]", text)


def _pn_glob(value: str) -> str:
    """A GLOB pattern for a person name in which ``^`` and a space match each other.

    ``*`` and ``?`` stay wildcards (PS3.4 C.2.2.2.4).  The text before the
    first separator or wildcard is a constant prefix, so SQLite still ranges
    over the column's index.
    """
    return "".join("[ ^]" if ch in "^ " else f"[{ch}]" if ch in "[]" else ch for ch in value)


def _pg_regex(value: str, pn: bool) -> str:
    """The PostgreSQL regular expression for a wildcard value (what GLOB does on SQLite):
    ``*`` any run, ``?`` one character, in a person name ``^`` and a space alike;
    every other character literal (case-sensitive, PS3.4 C.2.2.2.4)."""
    out = []
    for ch in value:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif pn and ch in "^ ":
            out.append("[ ^]")
        elif ch.isalnum():
            out.append(ch)
        else:
            out.append("\\" + ch)
    return "^" + "".join(out) + "$"


def _wildcard(expr: str, value: str, pn: bool, dialect: str) -> tuple[str, list[Any]]:
    """``expr`` matches the wildcard ``value`` (or, for a person name, the value with
    ``^`` and space alike): GLOB on SQLite, a regular expression on PostgreSQL."""
    if dialect == POSTGRESQL:
        return f"{expr} ~ ?", [_pg_regex(value, pn)]
    return f"{expr} GLOB ?", [_pn_glob(value) if pn else _glob_escape(value)]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _range(expr: str, kind: str, value: str, where: list[str], args: list[Any]) -> None:
    lo, _, hi = value.partition("-")
    lo, hi = lo.strip(), hi.strip()
    if kind == "DA":
        for v in (lo, hi):
            if v and not re.fullmatch(r"\d{8}", v):
                raise QueryError(f"date {v!r} in range {value!r} is not YYYYMMDD")
    if not lo and not hi:
        raise QueryError(f"range {value!r} has neither start nor end")
    if lo:
        where.append(f"{expr} >= ?")
        args.append(lo)
    if hi:
        # "-1200" includes 1200xx.xx; for dates the end day is included as is.
        where.append(f"{expr} <= ?")
        args.append(hi + ("~" if kind == "TM" else ""))


def _name_owner(keyword: str, level: str) -> tuple[str, str]:
    """(name_groups kind, the column it is keyed by) for a PN key at ``level``."""
    if keyword == "ReferringPhysicianName":
        return "study_referring", "st.study_instance_uid"
    if level == "PATIENT":
        return "patient", "p.patient_id"
    return "study_patient", "st.study_instance_uid"


def _match_pn(keyword: str, value: str, fuzzy: bool, where: list[str], args: list[Any],
              level: str, dialect: str) -> None:
    """PS3.4 C.2.2.2 person name matching, against every component group.

    A value without ``=`` matches a name when it matches any of its groups
    (Alphabetic, Ideographic, Phonetic), so ``王*``, ``王^小东`` and ``Wang*`` all
    find ``Wang^XiaoDong=王^小东``; a value with ``=`` matches group by group
    (an empty or ``*`` group matches anything).  In a group, ``^`` and a space
    match each other and trailing empty components are ignored
    ("WANG^XIAOMING" finds "WANG XIAOMING" and "WANG^XIAOMING^^").  The groups
    are rows of ``name_groups`` (store migration 8), ranged over by its index.
    """
    kind, owner = _name_owner(keyword, level)
    groups: list[tuple[int | None, str]] = [(None, value)] if "=" not in value else \
        list(enumerate(value.split("=")[:3]))
    for grp, text in groups:
        text = text.strip()
        if text in ("", "*"):
            continue
        sub = "SELECT g.owner FROM name_groups g WHERE g.kind = ?"
        sub_args: list[Any] = [kind]
        if grp is not None:
            sub += " AND g.grp = ?"
            sub_args.append(grp)
        for cond, cond_args in _group_match(text, fuzzy, dialect):
            where.append(f"{owner} IN ({sub} AND {cond})")
            args.extend([*sub_args, *cond_args])


def _group_match(text: str, fuzzy: bool, dialect: str = SQLITE
                 ) -> list[tuple[str, list[Any]]]:
    """Conditions on ``g.name`` for one group's query text, each with its parameters."""
    if fuzzy:
        words = [w for w in re.split(r"[\s^]+", text.replace("*", " ").replace("?", " ")) if w]
        # Each word starts some name component, in any case (SQLite's LIKE ignores
        # ASCII case; PostgreSQL's does not, its ILIKE does).
        like = "ILIKE" if dialect == POSTGRESQL else "LIKE"
        return [(f"(g.name {like} ? ESCAPE '\\' OR g.name {like} ? ESCAPE '\\' "
                 f"OR g.name {like} ? ESCAPE '\\')", [f"{w}%", f"%^{w}%", f"% {w}%"])
                for w in map(_like_escape, words)]
    if "*" in text or "?" in text:
        return [_wildcard("g.name", text, True, dialect)]
    core = text.rstrip("^ ")
    if not core:
        return []  # only separators: nothing to match on
    return [_wildcard("g.name", core, True, dialect)]


def _match(keyword: str, value: str, fuzzy: bool, where: list[str], args: list[Any],
           level: str, dialect: str) -> None:
    _, _, kind = COLUMNS[keyword]
    expr = _expr(keyword, level)
    value = value.strip()
    if kind == "UI" and "\\" in value:
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        where.append(f"{expr} IN ({', '.join('?' * len(uids))})")
        args.extend(uids)
        return
    if kind in ("DA", "TM") and "-" in value:
        _range(expr, kind, value, where, args)
        return
    if kind == "PN":
        _match_pn(keyword, value, fuzzy, where, args, level, dialect)
        return
    if kind == "IS":
        try:
            where.append(f"{expr} = ?")
            args.append(int(value))
        except ValueError:
            raise QueryError(f"{keyword} = {value!r} is not an integer") from None
        return
    if "*" in value or "?" in value:
        cond, cond_args = _wildcard(expr, value, False, dialect)
        where.append(cond)
        args.extend(cond_args)
        return
    where.append(f"{expr} = ?")
    args.append(value)


def find(store: Store, level: str, keys: dict[str, str], *, root: str = "study",
         limit: int | None = None, offset: int = 0, fuzzy: bool = False
         ) -> list[dict[str, Any]]:
    """Rows (keyword -> value) matching ``keys`` at ``level``, in a stable order."""
    sql, args = find_sql(level, keys, root=root, limit=limit, offset=offset, fuzzy=fuzzy,
                         dialect=store.index.dialect)
    out = []
    for r in store.query(sql, args):
        row = {k: v for k, v in r.items() if v is not None}
        if "ModalitiesInStudy" in row:
            row["ModalitiesInStudy"] = "\\".join(sorted(str(row["ModalitiesInStudy"])
                                                        .split(",")))
        out.append(row)
    return out


def _checked_level(level: str, root: str, label: str) -> str:
    """``level`` upper-cased, once it is a level the ``root`` information model has."""
    level = level.upper()
    if level not in LEVELS:
        raise QueryError(f"{label} {level!r} is not one of {', '.join(LEVELS)}")
    if root not in ("patient", "study"):
        raise QueryError(f"query root {root!r} is not patient or study")
    if level == "PATIENT" and root != "patient":
        raise QueryError("PATIENT level needs the patient root information model")
    return level


def find_sql(level: str, keys: dict[str, str], *, root: str = "study",
             limit: int | None = None, offset: int = 0, fuzzy: bool = False,
             dialect: str = SQLITE) -> tuple[str, tuple[Any, ...]]:
    """The SQL :func:`find` runs, and its parameters (for ``EXPLAIN QUERY PLAN``).
    ``dialect``: the store's (``store.index.dialect``); wildcards differ."""
    level = _checked_level(level, root, "query level")
    where: list[str] = []
    args: list[Any] = []
    for keyword, value in keys.items():
        if value is None or str(value).strip() in ("", "*"):
            continue
        if keyword == "ModalitiesInStudy" and level == "STUDY":
            mods = [m for m in str(value).split("\\") if m]
            where.append("EXISTS (SELECT 1 FROM series x WHERE x.study_instance_uid = "
                         f"st.study_instance_uid AND x.modality IN ({', '.join('?' * len(mods))}))")
            args.extend(mods)
            continue
        col = COLUMNS.get(keyword)
        if col is None or _RANK[col[0]] > _RANK[level]:
            continue  # not held or below the level: ignored (PS3.4 C.2.2.1)
        _match(keyword, str(value), fuzzy, where, args, level, dialect)
    cols = [(k, _expr(k, level)) for k, (lvl, _, _) in COLUMNS.items()
            if _RANK[lvl] <= _RANK[level]]
    if level == "PATIENT":
        cols = [(k, e) for k, e in cols if COLUMNS[k][0] == "PATIENT"]
    cols += list(_COUNTS[level].items())
    # Quoted: PostgreSQL folds unquoted names to lower case.
    select = ", ".join(f'{expr} AS "{k}"' for k, expr in cols)
    order = {"PATIENT": "p.patient_id", "STUDY": "st.study_date, st.study_instance_uid",
             "SERIES": "se.series_number, se.series_instance_uid",
             "IMAGE": "i.instance_number, i.sop_instance_uid"}[level]
    sql = f"SELECT {select} {_FROM[level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}"
    if limit is not None or offset:
        # No limit: SQLite's LIMIT -1 is an error on PostgreSQL; 2**62 means the same.
        sql += " LIMIT ? OFFSET ?"
        args.extend([1 << 62 if limit is None else max(0, int(limit)), max(0, int(offset))])
    return sql, tuple(args)


_SQL_LIST_CHUNK = 500  # bound parameters per IN (...) (SQLite caps them per statement)


def instances(store: Store, *, study: str | None = None, series: str | None = None,
              sop: list[str] | None = None) -> list[dict[str, Any]]:
    """Stored instances to retrieve, ordered by series then instance number."""
    where, args = [], []
    if study:
        where.append("study_instance_uid = ?")
        args.append(study)
    if series:
        where.append("series_instance_uid = ?")
        args.append(series)
    if not where and not sop:
        raise QueryError("a retrieve needs a study, series or SOP instance UID")
    sql = ("SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, sha256, size, "
           "instance_number, study_instance_uid, series_instance_uid FROM instances WHERE ")
    if not sop:
        rows = store.query(sql + " AND ".join(where), tuple(args))
    else:
        rows = []
        for n in range(0, len(sop), _SQL_LIST_CHUNK):
            chunk = sop[n:n + _SQL_LIST_CHUNK]
            in_list = f"sop_instance_uid IN ({', '.join('?' * len(chunk))})"
            rows += store.query(sql + " AND ".join([*where, in_list]), (*args, *chunk))
    rows.sort(key=lambda r: (r["series_instance_uid"], r["instance_number"] is None,
                             r["instance_number"] or 0, r["sop_instance_uid"]))
    for r in rows:
        del r["instance_number"]
    return rows


def _uid_list(value: str | None) -> list[str]:
    return [u.strip() for u in str(value or "").split("\\") if u.strip()]


def retrieve(store: Store, level: str, keys: dict[str, str], *, root: str = "study"
             ) -> list[dict[str, Any]]:
    """The instances a C-MOVE/C-GET identifier names (:func:`instances` rows).

    PS3.4 C.4.2.2.1: the identifier holds the unique keys of the retrieve
    level and those above; the level's own key is one value or a list of UIDs
    (no wildcards).  Other keys are ignored, so a retrieve never widens into a
    query; a missing or wildcard key at the level is a :class:`QueryError`.
    """
    level = _checked_level(level, root, "QueryRetrieveLevel")
    key = UNIQUE_KEYS[level]
    wanted = _uid_list(keys.get(key))
    if not wanted:
        raise QueryError(f"a {level} level retrieve needs {key}")
    if any("*" in u or "?" in u for u in wanted):
        raise QueryError(f"{key} = {keys.get(key)!r}: no wildcards in a retrieve")
    parents = {UNIQUE_KEYS[lvl]: "\\".join(_uid_list(keys.get(UNIQUE_KEYS[lvl])))
               for lvl in LEVELS[:_RANK[level]]
               if (lvl != "PATIENT" or root == "patient") and _uid_list(keys.get(UNIQUE_KEYS[lvl]))}
    if level == "PATIENT":
        studies: list[str] = []
        for pid in wanted:
            studies += [str(r["StudyInstanceUID"])
                        for r in find(store, "STUDY", {"PatientID": pid})]
        return [row for s in sorted(set(studies)) for row in instances(store, study=s)]
    # The level's matches (parents constrain), then their instances.
    matches = find(store, level, {**parents, key: "\\".join(wanted)}, root=root)
    if level == "IMAGE":
        sops = [str(r["SOPInstanceUID"]) for r in matches]
        return instances(store, sop=sops) if sops else []
    if level == "SERIES":
        return [row for r in matches
                for row in instances(store, series=str(r["SeriesInstanceUID"]))]
    return [row for r in matches for row in instances(store, study=str(r["StudyInstanceUID"]))]


def studies_of_patients(store: Store, patient_ids: list[str]) -> list[str]:
    """Study Instance UIDs held for these patient IDs (what a PATIENT-level answer exposes)."""
    out: list[str] = []
    for n in range(0, len(patient_ids), _SQL_LIST_CHUNK):
        chunk = patient_ids[n:n + _SQL_LIST_CHUNK]
        out += [str(r["study_instance_uid"]) for r in store.query(
            "SELECT study_instance_uid FROM studies WHERE patient_id IN "
            f"({', '.join('?' * len(chunk))}) ORDER BY study_instance_uid", tuple(chunk))]
    return out


def study_summary(store: Store, study_uid: str) -> dict[str, Any]:
    """Whose study it is, as indexed (Unicode; names with their component groups):
    ``patient_id``, ``patient_name``, ``study_description`` (None where unknown)."""
    row = store.query_one("SELECT patient_id, patient_name, study_description FROM studies "
                          "WHERE study_instance_uid = ?", (study_uid,))
    return dict(row) if row else {"patient_id": None, "patient_name": None,
                                  "study_description": None}


def case_for_study(store: Store, study_uid: str) -> str | None:
    row = store.query_one("SELECT case_id FROM cases WHERE study_instance_uid = ? AND "
                          "kind = 'case' ORDER BY created_at LIMIT 1", (study_uid,))
    return str(row["case_id"]) if row else None
