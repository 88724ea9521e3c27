"""HNSW reachability in Milvus Lite: rows an ANN search cannot find.

Writes the first 1,500 real commit vectors (results/real_vectors.npy, written by
`benchmarks/pipeline.py milvus`) into a fresh Milvus Lite collection (HNSW M 16,
efConstruction 200, COSINE), three rows per upsert as a backfill of small tenant-days does,
flushes, then searches each row's own vector within the tenant (ef 256, k 1). Prints the rows
that do not come back first (nor a row of identical score), and whether a query by primary key
and a search filtered to that primary key find them. On 2026-11-21 (milvus-lite 3.2.2): 1 of
1,500 (row 883, whose nearest other vector is at cosine 0.76): query finds it, search does not,
with upsert and with insert alike. This is what the retrievability check reports.

Usage: python benchmarks/hnsw_reachability.py [upsert|insert]
"""
import sys, numpy as np, tempfile, os
sys.path.insert(0,"/work/main")
from vector_assets.store import milvus_store
base=np.load("/work/main/results/real_vectors.npy")[:1500]
work=tempfile.mkdtemp(); db=os.path.join(work,"m.db")
c=milvus_store.connect(db); name="t"
milvus_store.create_collection(c,name,384,"HNSW","COSINE",{"M":16,"efConstruction":200},model_id="x")
mode=sys.argv[1] if len(sys.argv) > 1 else "upsert"
for i in range(0,1500,3):
    rows=[{"pk":f"{j:08d}","tenant":"a","day":"2024-01-01","kind":"x","record_id":str(j),"content_hash":"","model":"m","created_at":0,"embedded_at":0,"preview":"","vector":base[j].tolist()} for j in range(i,min(1500,i+3))]
    (c.upsert if mode=="upsert" else c.insert)(name,rows)
c.flush(name)
miss=[]
for j in range(1500):
    h=c.search(name,data=[base[j].tolist()],filter='tenant == "a"',limit=1,output_fields=["pk"],search_params={"params":{"ef":256}})[0]
    if not h or (h[0]["entity"]["pk"]!=f"{j:08d}" and h[0]["distance"]<0.9999): miss.append(j)
print(mode,"misses",len(miss),miss[:10])
for j in miss[:3]:
    q=c.query(name,filter=f'pk == "{j:08d}"',output_fields=["pk"])
    h=c.search(name,data=[base[j].tolist()],filter=f'pk == "{j:08d}"',limit=1,output_fields=["pk"])[0]
    print(j,"query finds",len(q),"search with pk filter finds",len(h))
milvus_store.stop_local_server(db)
