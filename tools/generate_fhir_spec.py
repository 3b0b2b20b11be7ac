"""Generate medcloud/fhir/_spec/* from the official FHIR R4 definitions in ../shared/spec/fhir-r4.

Run: python tools/generate_fhir_spec.py [SPEC_DIR]
The outputs are committed; they are what the server reads at run time, so the package works
without the shared folder.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "medcloud" / "fhir" / "_spec"
R4_TYPES_WITHOUT_SEARCH_PARAMS = {
    "Binary", "Parameters", "OperationOutcome", "BiologicallyDerivedProduct", "CatalogEntry",
    "MedicinalProductIngredient", "MedicinalProductManufactured", "ObservationDefinition",
    "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
}


def main() -> None:
    spec = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "spec" / "fhir-r4"
    OUT.mkdir(parents=True, exist_ok=True)
    bundle = json.loads((spec / "search-parameters.json").read_text())
    params = []
    for entry in bundle["entry"]:
        r = entry["resource"]
        params.append(
            {
                k: r[k]
                for k in (
                    "id", "url", "code", "base", "type", "expression", "target", "multipleOr",
                    "multipleAnd", "comparator", "modifier", "chain", "component", "description",
                )
                if k in r
            }
        )
    header = {"generated_by": "tools/generate_fhir_spec.py", "source": "shared/spec/fhir-r4/search-parameters.json"}
    (OUT / "search_parameters.json").write_text(json.dumps({**header, "parameters": params}, indent=0))
    comp = json.loads((spec / "compartmentdefinition-patient.json").read_text())
    (OUT / "compartment_patient.json").write_text(json.dumps(comp, indent=0))
    schema = (spec / "fhir.schema.json").read_bytes()
    (OUT / "fhir.schema.json.gz").write_bytes(gzip.compress(schema, compresslevel=9, mtime=0))
    # The packaged schema also defines Medplum's own resource types; keep the 146 of FHIR R4:
    # every base of an R4 search parameter, plus the R4 types that have no search parameter.
    bases = {b for e in bundle["entry"] for b in e["resource"]["base"]} - {"Resource", "DomainResource"}
    types = sorted(bases | R4_TYPES_WITHOUT_SEARCH_PARAMS)
    assert len(types) == 146, len(types)  # R4 ResourceType value set minus Resource, DomainResource
    (OUT / "resource_types.json").write_text(json.dumps({**header, "resource_types": types}, indent=0))
    # Value sets and code systems for token :in/:not-in/:above/:below (medcloud/fhir/terminology.py):
    # only the elements expansion and subsumption read.
    keep = ("resourceType", "url", "version", "content", "compose", "expansion", "concept")
    terms = [{k: r[k] for k in keep if k in r} for e in json.loads((spec / "valuesets.json").read_bytes())["entry"]
             if (r := e["resource"])["resourceType"] in ("ValueSet", "CodeSystem")]
    (OUT / "valuesets.json.gz").write_bytes(gzip.compress(json.dumps(terms, separators=(",", ":")).encode(),
                                                          compresslevel=9, mtime=0))
    print(f"wrote {len(params)} search parameters, {len(types)} resource types to {OUT}")


if __name__ == "__main__":
    main()
