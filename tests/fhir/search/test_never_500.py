"""Whatever the query, a search answers 200 or a 4xx OperationOutcome, never a 500."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEYS = ["name", "family:exact", "birthdate", "gender:not", "identifier:of-type", "organization", "organization.name",
        "_has:Observation:patient:code", "_id", "_lastUpdated", "_tag", "_sort", "_count", "_include", "_revinclude",
        "_summary", "_elements", "_total", "general-practitioner:Practitioner.name", "_has:Observation",
        "address-postalcode:missing", "link:identifier", "_type", "bogus", "name:contains", "death-date"]
VALUES = st.one_of(
    st.text(max_size=25),
    st.text(st.sampled_from("0123456789-+.:TZ|$,\\ gtlqnsabpe/Patient"), max_size=25),
    st.sampled_from(["gt2020", "eq2020-01-01T00:00:00Z", "Patient/x", "true", "-name", "Patient:organization", "*",
                     "count", "0", "1001", "http://loinc.org|1", "a$b", "' OR 1=1 --"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4),
       strict=st.booleans(), path=st.sampled_from(["Patient", "", "Patient/p1/Observation"]))
def test_random_queries_never_fail_with_500(api, query, strict, path):
    if api.client.get("/fhir/Patient/p1").status_code != 200:
        api.put(api.patient("Chalmers", id="p1", birthDate="1974-12-25",
                            managingOrganization={"reference": "Organization/o1"}))
        api.put({"resourceType": "Organization", "id": "o1", "name": "Acme"})
        api.create(api.observation("Patient/p1", "1", 5.5))
    headers = {"Prefer": "handling=strict"} if strict else None
    r = api.client.get(f"/fhir/{path}", params=query, headers=headers)
    assert r.status_code in (200, 400, 403, 404, 410), (query, r.status_code, r.text)
    body = r.json()
    assert body["resourceType"] == ("Bundle" if r.status_code == 200 else "OperationOutcome")
